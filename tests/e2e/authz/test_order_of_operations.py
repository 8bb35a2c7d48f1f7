"""Nothing protected happens before the ALLOW, proven by the order of events in the server:
every PDP decision and every SQL statement of one call, recorded as they happen."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from ops.devstack import PDP
from server.authz.pdp import PolicyDecisionPoint
from server.settings import Settings
from tests.support import RunningServer, insert_ticket, start_server

Event = tuple[str, str]


@pytest.fixture(scope="module")
def server(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[RunningServer]:
    """Every decision asked of the PDP (no decision cache), so each one is observed here."""
    running = start_server(make_settings(pdp, authz_cache_seconds=0), token)
    yield running
    running.stop()


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Event]]:
    """("pdp", "<kind> <action> allow|deny") and ("sql", "<VERB> <table...>"), in order."""
    seen: list[Event] = []
    real_check = PolicyDecisionPoint.check

    async def observed_check(
        self: PolicyDecisionPoint, principal: Any, entries: Any, **kw: Any
    ) -> Any:
        result = await real_check(self, principal, entries, **kw)
        for decision in result.decisions:
            for action, outcome in decision.actions.items():
                effect = "allow" if outcome.allowed else "deny"
                seen.append(("pdp", f"{decision.resource.kind} {action} {effect}"))
        return result

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        seen.append(("sql", " ".join(sql.split()[:4])))

    monkeypatch.setattr(PolicyDecisionPoint, "check", observed_check)
    event.listen(Engine, "before_cursor_execute", statement)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", statement)


def index(events: list[Event], kind: str, text: str) -> int:
    return next(i for i, (k, t) in enumerate(events) if k == kind and text in t)


def writes(events: list[Event]) -> list[Event]:
    return [
        e for e in events if e[0] == "sql" and e[1].split()[0] in ("INSERT", "UPDATE", "DELETE")
    ]


async def test_a_tool_denied_at_the_gate_touches_nothing(
    server: RunningServer, events: list[Event]
) -> None:
    async with server.client("alice") as client:
        await client.list_tools()
        events.clear()
        await client.call_tool("delete_ticket", {"ticket_id": 1}, raise_on_error=False)
    assert events == [("pdp", "mcp_tool call deny")]


async def test_an_allowed_update_reads_only_after_the_gate_and_writes_only_after_the_record_allow(
    server: RunningServer, events: list[Event]
) -> None:
    ticket = insert_ticket(server.db_path, team="tier1")
    async with server.client("alice") as client:
        await client.list_tools()
        events.clear()
        await client.call_tool("update_ticket", {"ticket_id": ticket, "priority": "urgent"})
    first_sql = next(i for i, (k, _) in enumerate(events) if k == "sql")
    assert index(events, "pdp", "mcp_tool call allow") < first_sql
    record_allow = index(events, "pdp", "ticket update allow")
    assert writes(events) and all(events.index(w) > record_allow for w in writes(events))


async def test_a_record_denial_writes_nothing(server: RunningServer, events: list[Event]) -> None:
    ticket = insert_ticket(server.db_path, team="tier2")
    async with server.client("alice") as client:
        await client.list_tools()
        events.clear()
        result = await client.call_tool(
            "close_ticket", {"ticket_id": ticket, "resolution": "not mine"}, raise_on_error=False
        )
    assert result.is_error
    assert ("pdp", "ticket view deny") in events
    assert writes(events) == []
