"""Ids that can name a record, and answers about invalid input that stay small."""

from __future__ import annotations

import pytest

from server.authz.errors import MAX_LISTED_PROBLEMS, invalid_arguments
from server.authz.records import MAX_RECORD_ID, record_key


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (1, 1),
        ("1", 1),
        ("42", 42),
        (MAX_RECORD_ID, MAX_RECORD_ID),
        (str(MAX_RECORD_ID), MAX_RECORD_ID),
    ],
)
def test_canonical_ids_name_a_record(value: object, key: int) -> None:
    assert record_key(value) == key


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        MAX_RECORD_ID + 1,
        2**64,
        True,
        1.0,
        None,
        "",
        "0",
        "01",
        "+1",
        "-1",
        " 1",
        "1 ",
        "1_0",
        "1e3",
        "0x1",
        "1.0",
        "\uff11",
        "\u0661",
        str(MAX_RECORD_ID + 1),
        "9" * 30,
    ],
)
def test_anything_else_names_no_record(value: object) -> None:
    assert record_key(value) is None


def test_an_invalid_arguments_answer_names_declared_fields_only_and_stays_small() -> None:
    errors = [{"loc": (f"sent_{i}",), "type": "unexpected_keyword_argument"} for i in range(20_000)]
    errors += [
        {"loc": ("ticket_id",), "type": "int_type", "msg": "Input should be a valid integer"},
        {"loc": ("title",), "type": "value_error", "msg": "Value error, 'secret' is bad"},
    ]
    text = invalid_arguments("tool 'x'", {"ticket_id", "title"}, errors)
    assert len(text) < 200
    assert "sent_" not in text and "secret" not in text
    assert "ticket_id: Input should be a valid integer" in text
    assert "title: invalid value" in text
    assert "20000 unexpected arguments (accepted: ticket_id, title)" in text


def test_the_described_problems_are_capped() -> None:
    declared = {f"f{i}" for i in range(50)}
    errors = [{"loc": (f"f{i}",), "type": "missing", "msg": "Field required"} for i in range(50)]
    text = invalid_arguments("tool 'x'", declared, errors)
    assert text.count("Field required") == MAX_LISTED_PROBLEMS
    assert f"{50 - MAX_LISTED_PROBLEMS} more" in text
