"""Declarations and result types every capability's tools share.

- Annotations for the three kinds of tools: the tool gate reads ``read_only`` and ``destructive``
  from them, so a tool declares exactly one of these.
- ``Timestamp``: a point in time as clients must receive it. The store keeps naive UTC (SQLite
  has no time zones); a naive value is taken as UTC, an aware one converted to UTC, and JSON
  always carries an explicit offset (``2026-11-29T12:55:54Z``) whatever the model's settings,
  with the schema ``{"type": "string", "format": "date-time"}``. Clients that check formats
  (the TypeScript SDK does, with ajv) refuse a timestamp without offset, after the tool ran.
- ``Deleted``: the result of a destructive tool.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Final

from mcp.types import ToolAnnotations
from pydantic import AfterValidator, BaseModel, PlainSerializer, WithJsonSchema

READ_ONLY: Final = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
WRITES: Final = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)
DESTRUCTIVE: Final = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)


DATE_TIME_SCHEMA: Final = {"type": "string", "format": "date-time"}


def as_utc(value: datetime) -> datetime:
    """``value`` as a timezone-aware UTC datetime; a naive value is taken to be UTC already."""
    if value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def rfc3339(value: datetime) -> str:
    """RFC 3339 text with an explicit offset (``Z`` for UTC), e.g. ``2026-11-29T12:55:54Z``."""
    return as_utc(value).isoformat().replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    AfterValidator(as_utc),
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    WithJsonSchema(DATE_TIME_SCHEMA),
]


class Deleted(BaseModel):
    id: int
    deleted: bool = True
