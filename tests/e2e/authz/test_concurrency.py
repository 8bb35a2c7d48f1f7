"""Many principals at once: every outcome matches the policy oracle, and no request's identity
leaks into another's PDP input or stored rows."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ops.dev_issuer import DevIssuer
from ops.devstack import PDP
from server.authz import components
from server.authz.decisions import ResourceRef
from server.authz.pdp import PolicyDecisionPoint
from server.edge.principal import Principal, principal_from_claims
from server.settings import Settings
from tests.conftest import AUDIENCE
from tests.support import (
    RunningServer,
    audit_entries,
    decisions_since,
    entry_inputs,
    insert_account,
    insert_ticket,
    start_server,
)
from tools.accounts.models import ACCOUNT
from tools.tickets.models import TICKET

PRINCIPALS = 50
CALLS_EACH = 20
PROFILES: list[dict[str, Any]] = [
    {"roles": ["support_agent"], "department": "support", "teams": ["tier1"]},
    {"roles": ["support_agent"], "department": "support", "teams": ["tier2"]},
    {"roles": ["support_agent"], "department": "support", "teams": ["tier1", "tier2"]},
    {
        "roles": ["finance_analyst"],
        "department": "finance",
        "teams": ["billing"],
        "refund_limit": 500,
    },
    {"roles": ["auditor"], "department": "compliance", "teams": []},
    {"roles": ["contractor"], "department": "external", "teams": []},
    {"roles": ["admin"], "department": "it", "teams": [], "mfa": True},
    {"roles": ["admin"], "department": "it", "teams": [], "mfa": False},
]


@pytest.fixture(scope="module")
def server(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[RunningServer]:
    """This module tests correctness under concurrency, not latency: a generous PDP deadline
    keeps a loaded machine from turning slow decisions into "authorization unavailable"."""
    running = start_server(make_settings(pdp, pdp_timeout_seconds=5), token)
    yield running
    running.stop()


def claims_of(i: int) -> dict[str, Any]:
    return {"sub": f"user{i:02d}", **PROFILES[i % len(PROFILES)]}


def rows(server: RunningServer, table: str) -> list[dict[str, Any]]:
    with sqlite3.connect(server.db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]  # noqa: S608


class Oracle:
    """Expected outcomes, decided by asking the PDP directly, outside the server."""

    def __init__(self, pdp: PDP) -> None:
        self.client = PolicyDecisionPoint(
            pdp.grpc_address, timeout_seconds=5, max_resources_per_request=200
        )

    async def allowed(self, principal: Principal, ref: ResourceRef, action: str) -> bool:
        result = await self.client.check(principal, [(ref, (action,))], request_id="oracle")
        return result.decisions[0].allowed(action)

    async def gate(self, principal: Principal, server: RunningServer, tool: str) -> bool:
        registered = await server.mcp.get_tool(tool)
        assert registered is not None
        return await self.allowed(principal, components.tool_resource(registered), "call")


def ticket_ref(row: dict[str, Any]) -> ResourceRef:
    return ResourceRef("ticket", str(row["id"]), {k: row[c.key] for k, c in TICKET.columns.items()})


def account_ref(row: dict[str, Any]) -> ResourceRef:
    attrs = {k: row[c.key] for k, c in ACCOUNT.columns.items()}
    return ResourceRef("account", str(row["id"]), {**attrs, **ACCOUNT.call_attributes})


async def test_fifty_principals_twenty_mixed_calls_each_match_the_policy_oracle(
    server: RunningServer, pdp: PDP, issuer: DevIssuer
) -> None:
    rng = random.Random(20261122)  # noqa: S311 - a reproducible workload, not a secret
    for team in ("tier1", "tier2"):
        for category in ("technical", "billing"):
            insert_ticket(server.db_path, team=team, category=category)
        insert_ticket(server.db_path, team=team, assignee="user00", status="in_progress")
    insert_account(server.db_path, segment="enterprise")
    ticket_rows = {r["id"]: r for r in rows(server, "ticket")}
    account_rows = {r["id"]: r for r in rows(server, "account")}
    missing = max(ticket_rows) + 10_000

    oracle = Oracle(pdp)
    await oracle.client.start()
    plans: dict[int, list[tuple[str, dict[str, Any], bool]]] = {}
    try:
        for i in range(PRINCIPALS):
            principal = principal_from_claims(claims_of(i))
            plan = []
            for _ in range(CALLS_EACH):
                kind = rng.choice(
                    ["get_ticket", "update_ticket", "get_account", "create_ticket", "list_tickets"]
                )
                if kind in ("get_ticket", "update_ticket"):
                    ticket_id = rng.choice([*ticket_rows, missing])
                    args: dict[str, Any] = {"ticket_id": ticket_id}
                    action = "view" if kind == "get_ticket" else "update"
                    if kind == "update_ticket":
                        args["priority"] = rng.choice(["low", "high"])
                    record_ok = (
                        ticket_id in ticket_rows
                        and await oracle.allowed(
                            principal, ticket_ref(ticket_rows[ticket_id]), "view"
                        )
                        and await oracle.allowed(
                            principal, ticket_ref(ticket_rows[ticket_id]), action
                        )
                    )
                elif kind == "get_account":
                    account_id = rng.choice(list(account_rows))
                    args = {"account_id": account_id}
                    record_ok = await oracle.allowed(
                        principal, account_ref(account_rows[account_id]), "view"
                    )
                elif kind == "create_ticket":
                    team, priority = (
                        rng.choice(["tier1", "tier2"]),
                        rng.choice(["normal", "urgent"]),
                    )
                    args = {"title": f"from {principal.id}", "team": team, "priority": priority}
                    new = {
                        "team": team,
                        "department": "support",
                        "status": "open",
                        "priority": priority,
                        "category": "technical",
                        "assignee": "",
                        "created_by": principal.id,
                    }
                    record_ok = await oracle.allowed(
                        principal, ResourceRef("ticket", "new", new), "create"
                    )
                else:
                    args, record_ok = {}, True
                expected = await oracle.gate(principal, server, kind) and record_ok
                plan.append((kind, args, expected))
            plans[i] = plan
    finally:
        await oracle.client.close()

    expectations = [expected for plan in plans.values() for _, _, expected in plan]
    assert 0.2 < sum(expectations) / len(expectations) < 0.8  # a real mix of allows and denials
    since = len(audit_entries(pdp.audit_log))

    async def run(i: int) -> list[str]:
        mismatches = []
        token = issuer.mint(claims_of(i), audience=AUDIENCE, ttl_seconds=600)
        async with server.client(token=token) as client:
            for kind, args, expected in plans[i]:
                result = await client.call_tool(kind, args, raise_on_error=False)
                text = result.content[0].text if result.is_error else ""
                # Losing an optimistic-concurrency race to another writer is not a denial.
                allowed = not result.is_error or text.startswith("The record changed")
                if allowed != expected:
                    mismatches.append(f"user{i:02d} {kind} {args}: expected {expected}: {text!r}")
                await asyncio.sleep(0)
        return mismatches

    outcomes = await asyncio.gather(*(run(i) for i in range(PRINCIPALS)))
    assert [m for ms in outcomes for m in ms] == []

    # Stored rows carry their own caller, whatever ran alongside.
    for row in rows(server, "ticket"):
        if row["title"].startswith("from user"):
            assert row["created_by"] == row["title"].removeprefix("from ")

    # Every PDP request carries exactly one principal: no request borrowed another's identity.
    by_request: dict[str, set[str]] = defaultdict(set)
    for entry in await decisions_since(server, pdp.audit_log, since):
        for inputs in entry_inputs(entry):
            by_request[inputs["requestId"]].add(inputs["principal"]["id"])
    assert len(by_request) >= PRINCIPALS
    assert all(len(ids) == 1 for ids in by_request.values())
