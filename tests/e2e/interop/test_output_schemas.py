"""Every tool's structured output validates against that tool's own output schema, strictly:
JSON Schema 2020-12 with formats checked, as the TypeScript SDK's ajv does in clients.

The Python SDK does not check formats, so a ``date-time`` without a UTC offset passed every
Python test while the TypeScript client rejected the result (after the tool had run).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.e2e.authz.test_authorization_matrix import DEMO_PRINCIPALS, EXAMPLES, TOOLS
from tests.support import RunningServer, arguments_for

FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER


def strict(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=FORMAT_CHECKER)


def formats_in(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("format"), str):
            yield schema["format"]
        for value in schema.values():
            yield from formats_in(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from formats_in(value)


def caller_of(tool: str) -> str:
    return next(who for who in DEMO_PRINCIPALS if TOOLS.allows(who, tool, "call"))


def test_the_format_checker_really_checks_date_time() -> None:
    """jsonschema accepts any string as a date-time unless rfc3339-validator is installed: then
    every format assertion here would pass vacuously."""
    assert "date-time" in FORMAT_CHECKER.checkers
    validator = strict({"type": "string", "format": "date-time"})
    assert not validator.is_valid("2026-11-29T12:55:54.077787")
    assert validator.is_valid("2026-11-29T12:55:54.077787Z")


async def test_every_output_schema_is_valid_and_uses_only_checked_formats(
    server: RunningServer,
) -> None:
    """Also for tools no policy test calls yet (a new tool): its schema is checkable."""
    async with server.client("dave") as client:
        tools = await client.list_tools()
    assert tools
    for tool in tools:
        if tool.output_schema is None:
            continue
        Draft202012Validator.check_schema(tool.output_schema)
        unchecked = set(formats_in(tool.output_schema)) - set(FORMAT_CHECKER.checkers)
        assert not unchecked, f"{tool.name}: formats nobody checks: {unchecked}"


@pytest.mark.parametrize("tool", list(EXAMPLES))
async def test_structured_output_validates_strictly_against_the_tools_own_schema(
    server: RunningServer, tool: str
) -> None:
    who = caller_of(tool)
    async with server.client(who) as client:
        schema = next(t for t in await client.list_tools() if t.name == tool).output_schema
        result = await client.call_tool(
            tool, arguments_for(dict(EXAMPLES[tool]), server, who), raise_on_error=False
        )
    assert not result.is_error, f"{who} / {tool}: {result.content}"
    assert schema is not None, f"{tool} declares no output schema"
    assert result.structured_content is not None, f"{tool} returned no structured content"
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in strict(schema).iter_errors(result.structured_content)
    ]
    assert errors == [], f"{tool}: {errors}"
