"""``Timestamp``: timezone-aware UTC inside, RFC 3339 with an offset on the wire, ``date-time`` in
the schema, so clients that check formats accept what the tools return."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict

from server.capability.results import Timestamp, as_utc, rfc3339


class Stamped(BaseModel):
    at: Timestamp


class StampedAsNumbers(BaseModel):
    """A model whose configuration would turn plain datetimes into numbers."""

    model_config = ConfigDict(ser_json_temporal="seconds")
    at: Timestamp


NAIVE = datetime(2026, 11, 29, 12, 55, 54, 77787)
PARIS = timezone(timedelta(hours=1))


def strict_validator(schema: dict[str, object]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_format_checker_really_checks_date_time() -> None:
    """Without rfc3339-validator installed, jsonschema silently accepts any string as a
    date-time; every format assertion below would then prove nothing."""
    validator = strict_validator({"type": "string", "format": "date-time"})
    assert not validator.is_valid("2026-11-29T12:55:54.077787")
    assert validator.is_valid("2026-11-29T12:55:54.077787Z")


def test_naive_datetime_from_the_store_is_taken_as_utc() -> None:
    stamped = Stamped(at=NAIVE)
    assert stamped.at == NAIVE.replace(tzinfo=UTC)
    assert stamped.at.utcoffset() == timedelta(0)


def test_aware_datetime_is_converted_to_utc_keeping_the_instant() -> None:
    paris = datetime(2026, 11, 29, 13, 55, 54, tzinfo=PARIS)
    stamped = Stamped(at=paris)
    assert stamped.at == paris
    assert stamped.at.tzinfo is UTC
    assert stamped.at.hour == 12


def test_json_carries_an_explicit_utc_offset() -> None:
    assert Stamped(at=NAIVE).model_dump_json() == '{"at":"2026-11-29T12:55:54.077787Z"}'
    assert json.loads(Stamped(at=NAIVE.replace(microsecond=0)).model_dump_json()) == {
        "at": "2026-11-29T12:55:54Z"
    }


def test_json_stays_rfc3339_whatever_the_model_configuration() -> None:
    assert StampedAsNumbers(at=NAIVE).model_dump(mode="json") == {
        "at": "2026-11-29T12:55:54.077787Z"
    }


def test_python_dump_keeps_an_aware_datetime() -> None:
    assert Stamped(at=NAIVE).model_dump() == {"at": NAIVE.replace(tzinfo=UTC)}


@pytest.mark.parametrize("mode", ["validation", "serialization"])
def test_schema_says_date_time_and_the_json_satisfies_it(
    mode: Literal["validation", "serialization"],
) -> None:
    schema = Stamped.model_json_schema(mode=mode)
    assert schema["properties"]["at"] == {"type": "string", "format": "date-time", "title": "At"}
    validator = strict_validator(schema)
    for value in (NAIVE, datetime(2026, 1, 1, tzinfo=PARIS), datetime(1, 1, 1)):
        validator.validate(Stamped(at=value).model_dump(mode="json"))


def test_round_trip_through_json_keeps_the_instant() -> None:
    stamped = Stamped(at=NAIVE)
    assert Stamped.model_validate_json(stamped.model_dump_json()) == stamped


def test_helpers_agree_with_the_type() -> None:
    assert as_utc(NAIVE) == NAIVE.replace(tzinfo=UTC)
    assert rfc3339(NAIVE) == Stamped(at=NAIVE).model_dump(mode="json")["at"]
