"""The store on PostgreSQL (what compose runs): a throwaway server from the pinned wheel, each
capability logging in with its own short-lived user from Vault's database engine; policy-derived
SQL filters, encrypted personal data and money movement all work there too."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ops.dev_issuer import demo_principals
from ops.devstack import PDP
from server.authz.decisions import ResourceRef
from server.authz.pdp import PolicyDecisionPoint
from server.edge.principal import principal_from_claims
from server.settings import Settings
from tests.conftest import PostgresStack
from tests.support import GrpcServicerThread, RunningServer, as_owner, start_server
from tools import CAPABILITIES
from tools.tickets.models import TICKET


@pytest.fixture(scope="module")
def pg_server(
    postgres_stack: PostgresStack,
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> Iterator[RunningServer]:
    settings = make_settings(pdp, vault=postgres_stack.vault, database_url=postgres_stack.url)
    running = start_server(settings, token)
    yield running
    running.stop()


async def fetch(stack: PostgresStack, query: str) -> list[dict[str, Any]]:
    """Inspect the database as its owner (not as any capability)."""
    async with as_owner(stack.postgres) as conn:
        return [dict(r) for r in await conn.fetch(query)]


async def test_the_url_holds_no_login_and_each_capability_logs_in_as_its_own_user(
    pg_server: RunningServer,
) -> None:
    url = pg_server.settings.database_url
    assert "@" not in url.split("//", 1)[1]  # no user, no password: both come from Vault
    owning = [c.name for c in CAPABILITIES if c.models]
    # Held since startup (each capability seeded its own rows with its own login).
    logins = {name: pg_server.runtime.stores.of(name).login.held for name in owning}  # type: ignore[union-attr]
    users = {login.username for login in logins.values() if login is not None}
    assert len(users) == len(owning)  # one distinct database user per capability


@pytest.mark.parametrize("who", ["alice", "bob", "carol", "erin"])
async def test_list_tickets_on_postgres_equals_per_row_decisions(
    pg_server: RunningServer, postgres_stack: PostgresStack, pdp: PDP, who: str
) -> None:
    rows = await fetch(postgres_stack, "SELECT * FROM ticket")
    refs = [
        ResourceRef("ticket", str(r["id"]), {k: r[c.key] for k, c in TICKET.columns.items()})
        for r in rows
    ]
    oracle = PolicyDecisionPoint(pdp.grpc_address, timeout_seconds=5, max_resources_per_request=200)
    await oracle.start()
    try:
        principal = principal_from_claims({"sub": who, **demo_principals()[who]})
        result = await oracle.check(
            principal, [(ref, ("view",)) for ref in refs], request_id="pg-oracle"
        )
    finally:
        await oracle.close()
    expected = {d.resource.id for d in result.decisions if d.allowed("view")}
    async with pg_server.client(who) as client:
        listed = (await client.call_tool("list_tickets", {"limit": 100})).structured_content[
            "tickets"
        ]
    assert {str(t["id"]) for t in listed} == expected
    assert (expected and len(expected) < len(rows)) or who == "erin"


async def test_writes_personal_data_and_confirmed_refunds_work_on_postgres(
    pg_server: RunningServer, postgres_stack: PostgresStack
) -> None:
    async def accept(
        message: str, response_type: Any, params: Any, context: Any
    ) -> dict[str, bool]:
        return {"confirm": True}

    await fetch(
        postgres_stack, "UPDATE account SET balance_cents = 100000 WHERE id = 2 RETURNING id"
    )
    async with pg_server.client("alice") as alice:
        created = await alice.call_tool("create_ticket", {"title": "Postgres says hello"})
    async with pg_server.client("carol", elicitation_handler=accept) as carol:
        account = (await carol.call_tool("get_account", {"account_id": 2})).structured_content
        refund = await carol.call_tool(
            "issue_refund", {"account_id": 2, "amount": "600.00", "reason": "Outage"}
        )
    assert created.structured_content["created_by"] == "alice"
    assert not account["pii_masked"] and "@" in account["email"]
    assert refund.structured_content["confirmed_by_human"] is True
    stored = await fetch(postgres_stack, "SELECT email FROM account WHERE id = 2")
    assert stored[0]["email"].startswith("vault:v1:")  # only ciphertext at rest
    outbox = await fetch(postgres_stack, "SELECT count(*) AS n FROM outbox")
    assert outbox[0]["n"] >= 1
    spent = await fetch(postgres_stack, "SELECT count(*) AS n FROM confirmation_use")
    assert spent[0]["n"] == 1  # the shared table: recorded through the accounts login


async def test_two_concurrent_refunds_cannot_both_slip_under_the_limit_on_postgres(
    pg_server: RunningServer,
    postgres_stack: PostgresStack,
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    """As on SQLite (tests/e2e/authz/test_refund_limits.py): both refunds are decided on a day's
    sum of 0; under READ COMMITTED the second write waits for the first and then finds the
    account's version moved, so it is rolled back."""
    from tests.e2e.authz.test_refund_limits import SlowRefundDecisions

    account = 4  # seeded, enough balance, refunded by no other test here
    with GrpcServicerThread(SlowRefundDecisions(pdp.grpc_address, delay=0.4)) as proxy:
        proxied = PDP(
            process=None,  # type: ignore[arg-type]
            grpc_address=f"127.0.0.1:{proxy.port}",
            http_url="",
            audit_log=pdp.audit_log,
        )
        settings = make_settings(
            proxied,
            vault=postgres_stack.vault,
            database_url=pg_server.settings.database_url,
            pdp_timeout_seconds=3.0,
        )
        server = start_server(settings, token)
        try:

            async def refund() -> Any:
                async with server.client("carol") as client:
                    return await client.call_tool(
                        "issue_refund",
                        {"account_id": account, "amount": "300.00", "reason": "Concurrent"},
                        raise_on_error=False,
                    )

            results = await asyncio.gather(refund(), refund())
        finally:
            server.stop()
    assert sorted(r.is_error for r in results) == [False, True]
    refused = next(r for r in results if r.is_error).content[0].text
    assert "changed while this request was being decided" in refused
    query = f"SELECT amount_cents FROM refund WHERE account_id = {account}"  # noqa: S608
    rows = await fetch(postgres_stack, query)
    assert [r["amount_cents"] for r in rows] == [30_000]
