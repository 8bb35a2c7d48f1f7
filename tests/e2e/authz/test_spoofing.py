"""Principal spoofing: identity comes from the verified token only.

Ids, roles or attributes placed in tool arguments, request ``_meta`` or HTTP headers change
nothing, and what reaches the PDP is the token's principal, with policy attributes only.
"""

from __future__ import annotations

import json
import sqlite3

from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from ops.devstack import PDP
from tests.support import RunningServer, db_snapshot, entry_inputs, insert_ticket, pdp_decisions

SPOOF = {
    "sub": "dave",
    "principal": "dave",
    "id": "dave",
    "roles": ["admin"],
    "role": "admin",
    "department": "it",
    "mfa": True,
    "user": {"id": "dave", "roles": ["admin"]},
}
SPOOF_HEADERS = {
    "X-User": "dave",
    "X-User-Id": "dave",
    "X-Roles": "admin",
    "X-Forwarded-User": "dave",
    "X-Principal": json.dumps({"id": "dave", "roles": ["admin"]}),
}


async def test_meta_and_headers_do_not_change_what_mallory_sees_or_can_do(
    server: RunningServer, pdp: PDP
) -> None:
    ticket = insert_ticket(server.db_path)
    before = db_snapshot(server.db_path)
    transport = StreamableHttpTransport(
        server.url, auth=server.token("mallory"), headers=SPOOF_HEADERS
    )
    async with Client(transport) as client, pdp_decisions(server, pdp.audit_log) as caused:
        assert {t.name for t in await client.list_tools()} == {"create_ticket"}
        result = await client.call_tool(
            "delete_ticket", {"ticket_id": ticket}, meta=SPOOF, raise_on_error=False
        )
        assert result.is_error
    assert db_snapshot(server.db_path) == before
    principals = [i["principal"] for e in caused for i in entry_inputs(e)]
    assert principals and all(
        p["id"] == "mallory" and p["roles"] == ["contractor"] for p in principals
    )
    # Only the attributes policies use, with the token's values.
    assert all(
        p["attr"] == {"department": "external", "teams": [], "mfa": False, "refund_limit": 0}
        for p in principals
    )


async def test_identity_in_arguments_is_a_schema_error_not_an_identity(
    server: RunningServer,
) -> None:
    before = db_snapshot(server.db_path)
    async with server.client("alice") as client:
        for extra in ({"created_by": "dave"}, {"principal": "dave"}, {"roles": ["admin"]}):
            result = await client.call_tool(
                "create_ticket", {"title": "Spoofed", **extra}, raise_on_error=False
            )
            assert result.is_error
    assert db_snapshot(server.db_path) == before


async def test_created_by_is_the_token_subject_whatever_the_meta_says(
    server: RunningServer,
) -> None:
    async with server.client("alice", headers=SPOOF_HEADERS) as client:
        result = await client.call_tool("create_ticket", {"title": "Who made me?"}, meta=SPOOF)
    ticket_id = result.structured_content["id"]
    with sqlite3.connect(server.db_path) as conn:
        (created_by,) = conn.execute(
            "SELECT created_by FROM ticket WHERE id = ?", (ticket_id,)
        ).fetchone()
    assert created_by == "alice"


async def test_pdp_inputs_carry_no_tool_arguments(server: RunningServer, pdp: PDP) -> None:
    canary = "canary-argument-7f1c2e"
    async with server.client("alice") as client:
        await client.list_tools()
        async with pdp_decisions(server, pdp.audit_log) as caused:
            await client.call_tool("create_ticket", {"title": canary, "description": canary})
    assert caused and canary not in json.dumps(caused)
