"""Declarations and result types every capability's tools share.

- Annotations for the three kinds of tools: the tool gate reads ``read_only`` and ``destructive``
  from them, so a tool declares exactly one of these.
- ``Timestamp``: a point in time as clients must receive it, RFC 3339 with its UTC offset. The
  store keeps naive UTC (SQLite has no time zones); a naive value is read as UTC, never as local
  time. Clients that validate formats (the TypeScript SDK does) refuse a timestamp without offset.
- ``Deleted``: the result of a destructive tool.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Final

from mcp.types import ToolAnnotations
from pydantic import AfterValidator, BaseModel

READ_ONLY: Final = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
WRITES: Final = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)
DESTRUCTIVE: Final = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Timestamp = Annotated[datetime, AfterValidator(as_utc)]


class Deleted(BaseModel):
    id: int
    deleted: bool = True
