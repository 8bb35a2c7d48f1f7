"""Every tool's example arguments are valid input for it, and every output model emits
timestamps with their UTC offset (clients that check formats refuse anything else)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import jsonschema
import pytest
from fastmcp.tools import Tool

from server.capability import Timestamp
from server.capability.declaration import component_name
from tools import CAPABILITIES

TOOLS = [(c, fn) for c in CAPABILITIES for fn in c.tools]


@pytest.mark.parametrize("case", TOOLS, ids=[component_name(fn) for _, fn in TOOLS])
def test_the_example_arguments_validate_against_the_tools_input_schema(case: Any) -> None:
    capability, fn = case
    tool = Tool.from_function(fn)
    example = capability.examples[tool.name]
    jsonschema.Draft202012Validator(tool.parameters).validate(example)


def test_a_naive_store_timestamp_goes_out_as_utc_with_its_offset() -> None:
    from pydantic import TypeAdapter

    adapter = TypeAdapter(Timestamp)
    stored = adapter.validate_python(datetime(2026, 11, 29, 12, 0, 0))  # as a model reads it
    assert adapter.dump_json(stored) == b'"2026-11-29T12:00:00Z"'
    assert adapter.json_schema() == {"format": "date-time", "type": "string"}
