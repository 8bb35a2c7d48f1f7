"""Record-level authorization: which ticket, which account, which rows, and asking a human first.

Everything runs against the real PDP and the real store over real HTTP. Expected row sets are
computed from the PDP itself, one decision per row, never hard-coded.
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx2
import pytest
from fastmcp import Client
from fastmcp.client.elicitation import ElicitResult
from fastmcp.client.transports import StreamableHttpTransport
from mcp import MCPError

from ops.dev_issuer import demo_principals
from ops.devstack import PDP
from server.authz.decisions import ResourceRef
from server.authz.pdp import PolicyDecisionPoint
from server.edge.principal import principal_from_claims
from tests.support import RunningServer, db_snapshot, insert_account, insert_ticket
from tools.accounts.models import ACCOUNT
from tools.tickets.models import TICKET

MODES = ["auto", "legacy"]  # 2026-07-28 (input-required rounds) and handshake-era (elicitation)


def rows(server: RunningServer, table: str) -> list[dict[str, Any]]:
    with sqlite3.connect(server.db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]  # noqa: S608


def count(server: RunningServer, table: str) -> int:
    with sqlite3.connect(server.db_path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608


async def per_row_allowed(pdp: PDP, who: str, refs: list[ResourceRef], action: str) -> set[str]:
    """Ask the PDP about every row independently; the ids it allows."""
    client = PolicyDecisionPoint(pdp.grpc_address, timeout_seconds=5, max_resources_per_request=200)
    await client.start()
    try:
        principal = principal_from_claims({"sub": who, **demo_principals()[who]})
        result = await client.check(
            principal, [(ref, (action,)) for ref in refs], request_id="differential"
        )
    finally:
        await client.close()
    return {d.resource.id for d in result.decisions if d.allowed(action)}


def ticket_ref(row: dict[str, Any]) -> ResourceRef:
    attributes = {name: row[column.key] for name, column in TICKET.columns.items()}
    return ResourceRef(TICKET.kind, str(row["id"]), attributes)


def account_ref(row: dict[str, Any]) -> ResourceRef:
    attributes = {name: row[column.key] for name, column in ACCOUNT.columns.items()}
    return ResourceRef(ACCOUNT.kind, str(row["id"]), {**attributes, **ACCOUNT.call_attributes})


@pytest.fixture(scope="module", autouse=True)
def varied_records(server: RunningServer) -> None:
    """Rows across every attribute the policies read, beside the seeded ones."""
    db = server.db_path
    for team in ("tier1", "tier2"):
        for category in ("technical", "billing", "account"):
            insert_ticket(db, team=team, category=category)
        insert_ticket(db, team=team, status="closed")
        insert_ticket(db, team=team, assignee="alice")
        insert_ticket(db, team=team, assignee="bob", status="in_progress")
        insert_ticket(db, team=team, created_by="mallory")
        insert_ticket(db, team=team, created_by="carol")
    for segment in ("smb", "enterprise"):
        insert_account(db, segment=segment)
        insert_account(db, segment=segment, status="suspended")


@pytest.mark.parametrize("who", ["alice", "bob", "carol", "dave", "erin"])
async def test_list_tickets_returns_exactly_the_rows_the_pdp_allows_one_by_one(
    server: RunningServer, pdp: PDP, who: str
) -> None:
    all_rows = rows(server, "ticket")
    assert len(all_rows) < 100
    expected = await per_row_allowed(pdp, who, [ticket_ref(r) for r in all_rows], "view")
    async with server.client(who) as client:
        result = await client.call_tool("list_tickets", {"limit": 100})
    listed = {str(t["id"]) for t in result.structured_content["tickets"]}
    assert listed == expected
    assert 0 < len(listed) <= len(all_rows)


@pytest.mark.parametrize("who", ["alice", "bob", "carol", "dave", "erin"])
async def test_list_accounts_returns_exactly_the_rows_the_pdp_allows_one_by_one(
    server: RunningServer, pdp: PDP, who: str
) -> None:
    all_rows = rows(server, "account")
    expected = await per_row_allowed(pdp, who, [account_ref(r) for r in all_rows], "view")
    async with server.client(who) as client:
        result = await client.call_tool("list_accounts", {"limit": 100})
    assert {str(a["id"]) for a in result.structured_content["accounts"]} == expected
    assert expected


def tier2_ticket(server: RunningServer) -> int:
    return insert_ticket(server.db_path, team="tier2")


async def test_alice_cannot_touch_a_tier2_ticket_and_cannot_tell_it_exists(
    server: RunningServer,
) -> None:
    ticket = tier2_ticket(server)
    missing = 999_999
    before = db_snapshot(server.db_path)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("get_ticket", {}),
        ("update_ticket", {"priority": "urgent"}),
        ("close_ticket", {"resolution": "Not mine to close"}),
        ("assign_ticket", {"assignee": "alice"}),
    ]
    async with server.client("alice") as client:
        for tool, extra in calls:
            theirs = await client.call_tool(
                tool, {"ticket_id": ticket, **extra}, raise_on_error=False
            )
            absent = await client.call_tool(
                tool, {"ticket_id": missing, **extra}, raise_on_error=False
            )
            assert theirs.is_error and absent.is_error
            assert theirs.content[0].text == absent.content[0].text.replace(
                str(missing), str(ticket)
            )
        for uri in (f"ticket://{ticket}", f"ticket://{missing}"):
            with pytest.raises(MCPError) as denied:
                await client.read_resource(uri)
            assert denied.value.error.message == f"Resource not found: '{uri}'"
    assert db_snapshot(server.db_path) == before


async def test_bob_works_the_same_tier2_ticket(server: RunningServer) -> None:
    ticket = tier2_ticket(server)
    async with server.client("bob") as client:
        assert (await client.call_tool("get_ticket", {"ticket_id": ticket})).structured_content[
            "team"
        ] == "tier2"
        await client.call_tool("update_ticket", {"ticket_id": ticket, "priority": "urgent"})
        contents = await client.read_resource(f"ticket://{ticket}")
        assert '"priority":"urgent"' in contents[0].text
        closed = await client.call_tool(
            "close_ticket", {"ticket_id": ticket, "resolution": "Fixed upstream"}
        )
    assert closed.structured_content["status"] == "closed"


async def test_a_viewable_record_says_why_an_action_is_refused(server: RunningServer) -> None:
    ticket = insert_ticket(server.db_path, team="tier1", status="closed")
    before = db_snapshot(server.db_path)
    async with server.client("alice") as client:
        result = await client.call_tool(
            "update_ticket", {"ticket_id": ticket, "priority": "low"}, raise_on_error=False
        )
    assert result.is_error
    assert (
        "You may not update ticket" in result.content[0].text
        and "Nothing was changed" in result.content[0].text
    )
    assert db_snapshot(server.db_path) == before


async def test_contractor_files_only_into_intake_at_normal_priority(server: RunningServer) -> None:
    async with server.client("mallory") as client:
        created = await client.call_tool(
            "create_ticket", {"title": "Laptop will not boot", "team": "tier1"}
        )
        before = db_snapshot(server.db_path)
        for args in ({"team": "tier2"}, {"team": "tier1", "priority": "urgent"}):
            refused = await client.call_tool(
                "create_ticket", {"title": "Escalate me", **args}, raise_on_error=False
            )
            assert refused.is_error
    assert created.structured_content["created_by"] == "mallory"
    assert db_snapshot(server.db_path) == before


# --- personal data ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "masked"), [("erin", True), ("alice", True), ("carol", False), ("dave", False)]
)
async def test_contact_details_are_masked_unless_the_policy_allows_view_pii(
    server: RunningServer, who: str, masked: bool
) -> None:
    account = insert_account(server.db_path, segment="smb")
    async with server.client(who) as client:
        one = (await client.call_tool("get_account", {"account_id": account})).structured_content
        listed = (await client.call_tool("list_accounts", {"limit": 100})).structured_content[
            "accounts"
        ]
        resource = (await client.read_resource(f"account://{account}"))[0].text
    in_list = next(a for a in listed if a["id"] == account)
    for view in (one, in_list):
        assert view["pii_masked"] is masked
        assert (view["email"] == "x@fixture.example") is not masked
        assert (view["phone"] == "+1 555 0000") is not masked
    assert ("x@fixture.example" in resource) is not masked


# --- refunds and confirmation -------------------------------------------------------------------


def refunds_of(server: RunningServer, account: int) -> list[dict[str, Any]]:
    return [r for r in rows(server, "refund") if r["account_id"] == account]


Handler = Callable[..., Awaitable[Any]]


def answering(answer: Any, asked: list[str]) -> Handler:
    async def handler(message: str, response_type: Any, params: Any, context: Any) -> Any:
        asked.append(message)
        return answer

    return handler


@pytest.mark.parametrize("mode", MODES)
async def test_carol_refunds_up_to_her_limit_without_being_asked(
    server: RunningServer, mode: str
) -> None:
    account = insert_account(server.db_path)
    asked: list[str] = []
    async with server.client(
        "carol", mode=mode, elicitation_handler=answering({"confirm": False}, asked)
    ) as client:
        result = await client.call_tool(
            "issue_refund", {"account_id": account, "amount": "500.00", "reason": "Outage credit"}
        )
    assert asked == []
    assert result.structured_content["confirmed_by_human"] is False
    assert [r["amount_cents"] for r in refunds_of(server, account)] == [50_000]


@pytest.mark.parametrize("mode", MODES)
async def test_above_her_limit_carol_is_asked_and_accepting_runs_it_once(
    server: RunningServer, mode: str
) -> None:
    account = insert_account(server.db_path)
    asked: list[str] = []
    async with server.client(
        "carol", mode=mode, elicitation_handler=answering({"confirm": True}, asked)
    ) as client:
        result = await client.call_tool(
            "issue_refund", {"account_id": account, "amount": "600.00", "reason": "Double charge"}
        )
    assert len(asked) == 1 and "above your limit of 500" in asked[0]
    assert result.structured_content["confirmed_by_human"] is True
    assert [r["amount_cents"] for r in refunds_of(server, account)] == [60_000]
    assert count(server, "confirmation_use") >= 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "answer", [ElicitResult(action="decline"), ElicitResult(action="cancel"), {"confirm": False}]
)
async def test_declining_cancelling_or_saying_no_changes_nothing(
    server: RunningServer, mode: str, answer: Any
) -> None:
    account = insert_account(server.db_path)
    before = db_snapshot(server.db_path)
    asked: list[str] = []
    async with server.client(
        "carol", mode=mode, elicitation_handler=answering(answer, asked)
    ) as client:
        result = await client.call_tool(
            "issue_refund",
            {"account_id": account, "amount": "700.00", "reason": "Goodwill"},
            raise_on_error=False,
        )
    assert len(asked) == 1
    assert result.is_error and "Not confirmed" in result.content[0].text
    assert db_snapshot(server.db_path) == before


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_that_cannot_ask_gets_a_clear_refusal(
    server: RunningServer, mode: str
) -> None:
    account = insert_account(server.db_path)
    before = db_snapshot(server.db_path)
    async with server.client("carol", mode=mode) as client:
        result = await client.call_tool(
            "issue_refund",
            {"account_id": account, "amount": "650.00", "reason": "Goodwill"},
            raise_on_error=False,
        )
    assert result.is_error and "cannot ask" in result.content[0].text
    assert db_snapshot(server.db_path) == before


async def test_obligations_of_a_denied_refund_are_ignored(server: RunningServer) -> None:
    """Enterprise refunds above carol's limit need MFA: the PDP denies, though the ALLOW rule that
    asks for confirmation also fired. Nobody is asked; nothing runs."""
    account = insert_account(server.db_path, segment="enterprise")
    before = db_snapshot(server.db_path)
    asked: list[str] = []
    async with server.client(
        "carol", elicitation_handler=answering({"confirm": True}, asked)
    ) as client:
        result = await client.call_tool(
            "issue_refund",
            {"account_id": account, "amount": "600.00", "reason": "Goodwill"},
            raise_on_error=False,
        )
    assert asked == []
    assert result.is_error and "multi-factor" in result.content[0].text
    assert db_snapshot(server.db_path) == before


async def test_refunds_above_the_large_refund_line_are_refused_for_analysts(
    server: RunningServer,
) -> None:
    account = insert_account(server.db_path, balance_cents=1_000_000)
    before = db_snapshot(server.db_path)
    async with server.client(
        "carol", elicitation_handler=answering({"confirm": True}, [])
    ) as client:
        result = await client.call_tool(
            "issue_refund",
            {"account_id": account, "amount": "6000.00", "reason": "Big one"},
            raise_on_error=False,
        )
    assert result.is_error and "You may not refund" in result.content[0].text
    assert db_snapshot(server.db_path) == before


async def test_account_suspended_while_the_human_thinks_is_not_refunded(
    server: RunningServer,
) -> None:
    """The decision is taken again after the answer, on the record as it is then."""
    account = insert_account(server.db_path)

    async def suspend_then_accept(
        message: str, response_type: Any, params: Any, context: Any
    ) -> Any:
        with sqlite3.connect(server.db_path) as conn:
            conn.execute(
                "UPDATE account SET status = 'suspended', version = version + 1 WHERE id = ?",
                (account,),
            )
        return {"confirm": True}

    async with server.client(
        "carol", mode="legacy", elicitation_handler=suspend_then_accept
    ) as client:
        result = await client.call_tool(
            "issue_refund",
            {"account_id": account, "amount": "800.00", "reason": "Goodwill"},
            raise_on_error=False,
        )
    assert result.is_error
    assert refunds_of(server, account) == []


async def test_a_failure_in_the_middle_of_a_refund_rolls_everything_back(
    server: RunningServer,
) -> None:
    account = insert_account(server.db_path)
    with sqlite3.connect(server.db_path) as conn:
        # A real database fault on the second write of the refund (the balance or the refund row,
        # whichever the unit of work flushes last), injected with a trigger.
        conn.execute(
            "CREATE TRIGGER fail_refund BEFORE INSERT ON refund"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )
    before = db_snapshot(server.db_path)
    try:
        async with server.client("carol") as client:
            result = await client.call_tool(
                "issue_refund",
                {"account_id": account, "amount": "10.00", "reason": "Goodwill"},
                raise_on_error=False,
            )
        assert result.is_error
        assert "injected" not in result.content[0].text  # internal errors are masked
        assert db_snapshot(server.db_path) == before
        balance = next(r for r in rows(server, "account") if r["id"] == account)["balance_cents"]
        assert Decimal(balance) == Decimal(100_000)
    finally:
        with sqlite3.connect(server.db_path) as conn:
            conn.execute("DROP TRIGGER fail_refund")


async def test_an_accepted_confirmation_cannot_be_replayed(server: RunningServer) -> None:
    """Resend the exact retry (answer + sealed state) that ran a refund: it must not run again."""
    account = insert_account(server.db_path)
    retries: list[tuple[dict[str, str], bytes]] = []

    def capturing_client(**options: Any) -> httpx2.AsyncClient:
        async def keep_retry(request: httpx2.Request) -> None:
            body = request.content
            if b"issue_refund" in body and (
                b"inputResponses" in body or b"input_responses" in body
            ):
                retries.append((dict(request.headers), body))

        return httpx2.AsyncClient(**options, event_hooks={"request": [keep_retry]})

    transport = StreamableHttpTransport(
        server.url, auth=server.token("carol"), httpx_client_factory=capturing_client
    )
    async with Client(transport, elicitation_handler=answering({"confirm": True}, [])) as client:
        await client.call_tool(
            "issue_refund", {"account_id": account, "amount": "900.00", "reason": "Replay me"}
        )
    assert len(retries) == 1 and len(refunds_of(server, account)) == 1
    headers, body = retries[0]
    async with httpx2.AsyncClient() as raw:
        replay = await raw.post(server.url, content=body, headers=headers)
    assert "already used" in replay.text
    assert len(refunds_of(server, account)) == 1


async def test_a_request_state_the_server_did_not_seal_is_refused(server: RunningServer) -> None:
    """The request_state comes back through the client. One the client wrote itself (the
    question's fields with a nonce of its choosing, as plain JSON), one changed on the way, or
    none at all is refused and nothing runs; the sealed state, unchanged, is accepted (once)."""
    account = insert_account(server.db_path)
    declined: list[tuple[dict[str, str], dict[str, Any]]] = []

    def capturing_client(**options: Any) -> httpx2.AsyncClient:
        async def keep_answer(request: httpx2.Request) -> None:
            body = json.loads(request.content or b"{}")
            if body.get("params", {}).get("inputResponses"):
                declined.append((dict(request.headers), body))

        return httpx2.AsyncClient(**options, event_hooks={"request": [keep_answer]})

    transport = StreamableHttpTransport(
        server.url, auth=server.token("carol"), httpx_client_factory=capturing_client
    )
    async with Client(transport, elicitation_handler=answering({"confirm": False}, [])) as client:
        result = await client.call_tool(
            "issue_refund",
            {"account_id": account, "amount": "950.00", "reason": "Forge me"},
            raise_on_error=False,
        )
    assert result.is_error and len(declined) == 1
    headers, body = declined[0]
    headers.pop("content-length", None)
    params = body["params"]
    params["inputResponses"]["confirm"] = {"action": "accept", "content": {"confirm": True}}
    sealed: str = params["requestState"]
    subject = f"refund:{account}:950.00:"
    own = {"subject": subject, "principal": "carol", "nonce": secrets.token_hex(16), "issued": 0}
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    forgeries = [json.dumps(own), base64.b64encode(json.dumps(own).encode()).decode(), flipped]

    async def send(request_state: str | None) -> str:
        sent = {**body, "params": {**params, "requestState": request_state}}
        async with httpx2.AsyncClient() as raw:
            return (await raw.post(server.url, json=sent, headers=headers)).text

    before = db_snapshot(server.db_path)
    for forged in forgeries:
        assert "Invalid or expired requestState" in await send(forged), forged
    assert "does not match the request or has expired" in await send(None)
    assert db_snapshot(server.db_path) == before
    assert '"confirmed_by_human":true' in (await send(sealed)).replace(" ", "")
    assert [r["amount_cents"] for r in refunds_of(server, account)] == [95_000]
