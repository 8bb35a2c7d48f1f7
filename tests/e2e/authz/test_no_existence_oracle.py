"""A record the caller may not view and a record that does not exist take the same path: the
same answer, the same PDP requests (count and shape, read from the PDP's own decision log), the
same database statements and the same log lines. Nothing about the time it takes can tell them
apart either, since nothing is done for one that is not done for the other; wall time is not
asserted (that is for benchmarks)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastmcp import Client
from mcp import MCPError
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ops.devstack import PDP
from ops.policy_suites import component_matrix
from server.settings import Settings
from tests.support import (
    SERVER,
    RunningServer,
    caller_span,
    db_snapshot,
    entry_inputs,
    insert_account,
    insert_ticket,
    pdp_decisions,
    server_logs,
    spans_of_trace,
    start_server,
)
from tools import CAPABILITIES
from tools.tickets.models import TICKET

MISSING_ID = 987_654


@pytest.fixture(scope="module")
def server(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[RunningServer]:
    """A server of this module's own, with a PDP deadline well above a busy host's latency: a
    deadline missed on one path and not on the other would make them differ for a reason that
    has nothing to do with the record (and fail closed, which other tests cover). The decision
    cache is off: the tool gate is the same question on both paths, and a cache would answer it
    on whichever path came second, which says nothing about the record either. Statement spans
    are on: they are how the test sees the database work of each path."""
    settings = make_settings(
        pdp, pdp_timeout_seconds=3.0, authz_cache_seconds=0, otel_statement_spans=True
    )
    running = start_server(settings, token)
    yield running
    running.stop()


@dataclass(frozen=True)
class Path:
    """What one request did, with the record id blanked out."""

    answer: str
    pdp_requests: list[list[tuple[Any, ...]]]
    statements: list[str]
    log_lines: list[str]


def blank(text: str, record_id: int) -> str:
    return re.sub(rf"\b{record_id}\b", "<id>", text)


async def answer_of(call: Awaitable[Any]) -> str:
    try:
        result = await call
    except MCPError as refused:
        return f"error {refused.error.code}: {refused.error.message}"
    if isinstance(result, list):  # resource contents: the read succeeded
        return "read: " + result[0].text[:40]
    return f"is_error={result.is_error}: {result.content[0].text}"


async def path_of(
    server: RunningServer,
    pdp: PDP,
    spans: InMemorySpanExporter,
    who: str,
    record_id: int,
    call: Callable[[Client[Any], int], Awaitable[Any]],
) -> Path:
    async with server.client(who) as client:
        await client.list_tools()  # the client's own schema listing, outside what is compared
        async with pdp_decisions(server, pdp.audit_log) as decided:
            with server_logs() as logs, caller_span() as trace_id:
                answer = await answer_of(call(client, record_id))
            tree = await spans_of_trace(
                spans, trace_id, lambda found: any(s.kind == SERVER for s in found)
            )
    requests = [
        sorted(
            (
                i["principal"]["id"],
                i["resource"]["kind"],
                blank(i["resource"]["id"], record_id),
                tuple(i["actions"]),
                tuple(sorted(i["resource"]["attr"])),
            )
            for i in entry_inputs(entry)
        )
        for entry in decided
    ]
    statements = [
        str((s.attributes or {}).get("db.query.text"))
        for s in sorted(tree, key=lambda s: s.start_time or 0)
        if s.instrumentation_scope is not None and s.instrumentation_scope.name == "server.store"
    ]
    assert all(r.exc_info is None for r in logs), [(r.name, r.getMessage()) for r in logs]
    lines = [f"{r.levelname} {r.name}: {blank(r.getMessage(), record_id)}" for r in logs]
    return Path(blank(answer, record_id), requests, statements, lines)


Call = Callable[[Client[Any], int], Awaitable[Any]]


def tool(name: str, **extra: Any) -> Call:
    key = "account_id" if "account" in name else "ticket_id"
    return lambda c, record_id: c.call_tool(name, {key: record_id, **extra}, raise_on_error=False)


def read(scheme: str) -> Call:
    return lambda c, record_id: c.read_resource(f"{scheme}://{record_id}")


# (who, the call, a record of theirs they may not view). Every call is one the tool gate lets
# them make: the record decision is what is compared.
CASES: dict[str, tuple[str, Call, Callable[[RunningServer], int]]] = {
    "get_ticket": ("alice", tool("get_ticket"), lambda s: insert_ticket(s.db_path, team="tier2")),
    "update_ticket": (
        "alice",
        tool("update_ticket", priority="urgent"),
        lambda s: insert_ticket(s.db_path, team="tier2"),
    ),
    "assign_ticket": (
        "alice",
        tool("assign_ticket", assignee="alice"),
        lambda s: insert_ticket(s.db_path, team="tier2"),
    ),
    "close_ticket": (
        "alice",
        tool("close_ticket", resolution="Not mine to close"),
        lambda s: insert_ticket(s.db_path, team="tier2"),
    ),
    "ticket resource": ("alice", read("ticket"), lambda s: insert_ticket(s.db_path, team="tier2")),
    "get_account": (
        "alice",
        tool("get_account"),
        lambda s: insert_account(s.db_path, segment="enterprise"),
    ),
    "account resource": (
        "alice",
        read("account"),
        lambda s: insert_account(s.db_path, segment="enterprise"),
    ),
}


@pytest.mark.parametrize("case", CASES)
async def test_forbidden_and_missing_records_take_the_same_path(
    server: RunningServer, pdp: PDP, spans: InMemorySpanExporter, case: str
) -> None:
    who, call, forbidden_record = CASES[case]
    forbidden = forbidden_record(server)
    before = db_snapshot(server.db_path)
    reached = len(server.reached.calls)
    theirs = await path_of(server, pdp, spans, who, forbidden, call)
    absent = await path_of(server, pdp, spans, who, MISSING_ID, call)

    assert theirs == absent
    # What is compared is the real thing: a refusal, a record decision and a database read.
    assert "not found" in theirs.answer.lower()
    kinds = {request[1] for entry in theirs.pdp_requests for request in entry}
    assert kinds == {"mcp_tool" if "resource" not in case else "mcp_resource", case_kind(case)}
    assert theirs.statements, "the record was looked up"
    assert db_snapshot(server.db_path) == before
    assert len(server.reached.calls) - reached == (0 if "resource" in case else 2)


def case_kind(case: str) -> str:
    return "account" if "account" in case else "ticket"


async def test_the_record_decision_of_a_missing_record_is_the_placeholder_of_its_kind(
    server: RunningServer, pdp: PDP, spans: InMemorySpanExporter
) -> None:
    """The PDP is asked about the id that was asked for, with the kind's fixed placeholder
    attributes; what it answers is never used (alice's own queue would be visible to her)."""
    async with server.client("alice") as client:
        await client.list_tools()
        async with pdp_decisions(server, pdp.audit_log) as decided:
            result = await client.call_tool(
                "get_ticket", {"ticket_id": MISSING_ID}, raise_on_error=False
            )
    assert result.is_error and result.content[0].text == f"Ticket {MISSING_ID} not found."
    (record,) = [i for e in decided for i in entry_inputs(e) if i["resource"]["kind"] == "ticket"]
    assert record["resource"]["id"] == str(MISSING_ID)
    assert record["resource"]["attr"] == dict(TICKET.placeholder)


def test_the_cases_cover_every_single_record_tool_and_resource_alice_may_use() -> None:
    single_record = {
        name
        for capability in CAPABILITIES
        for name, arguments in capability.examples.items()
        if {"ticket_id", "account_id"} & set(arguments)
    }
    hers = single_record & set(component_matrix("tool").allowed_for("alice", "call"))
    assert hers and hers <= set(CASES)
    templates = component_matrix("resource").allowed_for("alice", "read")
    assert {f"{t.split(':', 1)[0]} resource" for t in templates} <= set(CASES)
