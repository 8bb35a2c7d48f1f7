"""Expected outcomes are answers, not exceptions: an odd id is "not found" or a validation error,
never an internal error; invalid input is described without being echoed back; and each of
these is one log line without a traceback."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from mcp import MCPError
from pydantic import AnyUrl

from server.authz.errors import INVALID_PARAMS, MAX_LISTED_PROBLEMS
from server.authz.records import MAX_RECORD_ID
from tests.support import RunningServer, db_snapshot, insert_ticket, server_logs


def one_line_each(records: list[logging.LogRecord], expected: int = 1) -> None:
    """``expected`` log records at INFO or above, none with a traceback."""
    described = [(r.levelname, r.name, r.getMessage()[:120]) for r in records]
    assert all(r.exc_info is None for r in records), described
    assert all(r.levelno < logging.ERROR for r in records), described
    assert len(records) == expected, described


# Ids in resource URIs that name no record: every one is "not found", as any unknown URI is.
ODD_URIS = [
    "1e3",
    "0x1",
    "\uff11",  # full-width digit one
    "\uff10\uff11",
    "99999999999999999999999",
    str(MAX_RECORD_ID + 1),
    str(2**64),
    "-1",
    "0",
    "01",
    "+1",
    "1_0",
    "1.0",
    "%201",
    "1%00",
    "\u0661",  # Arabic-Indic digit one
]


@pytest.mark.parametrize("scheme", ["ticket", "account"])
@pytest.mark.parametrize("odd", ODD_URIS)
async def test_odd_ids_in_resource_uris_are_not_found(
    server: RunningServer, scheme: str, odd: str
) -> None:
    uri = f"{scheme}://{odd}"
    async with server.client("dave") as client:  # dave may view every record that exists
        with server_logs() as logs, pytest.raises(MCPError) as refused:
            await client.read_resource(uri)
    assert refused.value.error.code == INVALID_PARAMS
    # Exactly the URI as it went over the wire (the client percent-encodes non-ASCII).
    assert refused.value.error.message == f"Resource not found: {str(AnyUrl(uri))!r}"
    # FastMCP's own path-security screen refuses a NUL byte before the resource runs, at DEBUG.
    one_line_each(logs, expected=0 if "%00" in odd else 1)


async def test_an_empty_id_matches_no_resource_at_all(server: RunningServer) -> None:
    async with server.client("dave") as client:
        with server_logs() as logs, pytest.raises(MCPError) as refused:
            await client.read_resource("ticket://")
    assert refused.value.error.code == INVALID_PARAMS
    assert refused.value.error.message == "Resource not found: 'ticket://'"
    one_line_each(logs, expected=0)


async def test_the_canonical_id_still_reads_the_record(server: RunningServer) -> None:
    ticket = insert_ticket(server.db_path)
    async with server.client("dave") as client:
        with server_logs() as logs:
            contents = await client.read_resource(f"ticket://{ticket}")
    assert json.loads(contents[0].text)["id"] == ticket
    one_line_each(logs, expected=0)


@pytest.mark.parametrize(
    "ticket_id",
    [1e30, 2**64, MAX_RECORD_ID + 1, 2**63, -1, 0, "1", 1.5, True, None, [1], {"id": 1}],
    ids=repr,
)
async def test_odd_tool_ids_are_validation_errors_that_run_nothing(
    server: RunningServer, ticket_id: Any
) -> None:
    before = db_snapshot(server.db_path)
    reached = len(server.reached.calls)
    async with server.client("dave") as client:
        with server_logs() as logs:
            result = await client.call_tool(
                "get_ticket", {"ticket_id": ticket_id}, raise_on_error=False
            )
    assert result.is_error
    text = result.content[0].text
    assert text.startswith("1 validation error for tool 'get_ticket': ticket_id: ")
    assert "Error calling tool" not in text  # not a masked internal error
    assert server.reached.calls[reached:] == ["get_ticket"]  # past authorization, body not run
    assert db_snapshot(server.db_path) == before
    one_line_each(logs)


async def test_a_missing_record_is_one_info_line(server: RunningServer) -> None:
    async with server.client("dave") as client:
        with server_logs() as logs:
            result = await client.call_tool(
                "get_ticket", {"ticket_id": MAX_RECORD_ID}, raise_on_error=False
            )
    assert result.is_error and result.content[0].text == f"Ticket {MAX_RECORD_ID} not found."
    one_line_each(logs)
    assert logs[0].levelno == logging.INFO


async def test_twenty_thousand_unexpected_keys_get_a_small_answer_that_names_none(
    server: RunningServer,
) -> None:
    keys = {f"x{i:05d}": 0 for i in range(20_000)}
    request_size = len(json.dumps({"ticket_id": 1, **keys}))
    assert request_size < server.settings.max_body_bytes  # the edge lets it through
    async with server.client("dave") as client:
        with server_logs() as logs:
            result = await client.call_tool(
                "get_ticket", {"ticket_id": 1, **keys}, raise_on_error=False
            )
    text = result.content[0].text
    assert result.is_error
    assert len(text) < 300, f"{len(text)} characters for a {request_size}-byte request"
    assert "x0" not in text  # no key of the request is named
    assert "20000 unexpected arguments" in text and "accepted: ticket_id" in text
    one_line_each(logs)
    assert "x0" not in logs[0].getMessage()


async def test_many_wrong_fields_are_counted_not_listed(server: RunningServer) -> None:
    """Each declared field at fault is named with the rule it breaks, up to a cap."""
    arguments = {
        "title": "x",  # too short
        "description": 5,
        "priority": "whenever",
        "team": "tier9",
        "category": ["billing"],
        "unexpected": "<script>",
    }
    async with server.client("dave") as client:
        result = await client.call_tool("create_ticket", arguments, raise_on_error=False)
    text = result.content[0].text
    assert result.is_error and text.startswith("6 validation errors for tool 'create_ticket': ")
    named = [part.split(":")[0] for part in text.split(": ", 1)[1].split("; ")]
    assert len([n for n in named if n in arguments]) == MAX_LISTED_PROBLEMS
    assert "<script>" not in text and "whenever" not in text and "tier9" not in text
    assert "1 unexpected argument" in text


async def test_a_prompt_without_its_required_argument_is_one_line(server: RunningServer) -> None:
    async with server.client("dave") as client:
        with server_logs() as logs, pytest.raises(MCPError) as refused:
            await client.get_prompt("triage_ticket", {})
    assert refused.value.error.code == INVALID_PARAMS
    assert "ticket_id: Field required" in refused.value.error.message
    one_line_each(logs, expected=0)
