"""``Timestamp``: a point in time as MCP clients expect it in structured tool output.

A plain ``datetime`` field advertises ``format: date-time`` in the tool's output schema, but a
naive value (SQLite and ``TIMESTAMP WITHOUT TIME ZONE`` columns give those back) serializes
without a UTC offset, which is not an RFC 3339 date-time. Clients that check formats (the
official TypeScript SDK does, with ajv) then reject the whole result, after the tool ran.

``Timestamp`` fixes the contract in one place:

- validation: a naive datetime is taken as UTC (the store writes UTC, ``server.store.utcnow``);
  an aware one is converted to UTC, so every value is timezone-aware UTC;
- JSON serialization: always RFC 3339 with an explicit offset, ``2026-11-29T12:55:54.077787Z``,
  whatever the model's configuration (e.g. ``ser_json_temporal``) says;
- JSON schema (input and output): ``{"type": "string", "format": "date-time"}``.

Use it for every timestamp in a tool's return model::

    class TicketOut(BaseModel):
        created_at: Timestamp
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Final

from pydantic import AfterValidator, PlainSerializer, WithJsonSchema

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
