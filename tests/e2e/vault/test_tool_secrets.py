"""What the tools do with their Vault identities, over real MCP calls against real OpenBao:
account PII exists only as transit ciphertext and is decrypted only for callers allowed to see
it; ticket changes are announced by outbox rows signed with the tickets key; at steady state a
call makes no identity or secret request to Vault (counted on the wire); and a sealed Vault
fails secret-needing calls closed, with nothing changed, until it is unsealed."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import hvac
import pytest
from fastmcp.exceptions import ToolError

from ops.devstack import PDP, OpenBao
from server.settings import Settings
from server.vault.client import UNAVAILABLE_TEXT
from tests.support import (
    CANARIES,
    RunningServer,
    db_snapshot,
    encrypt_fixture_contacts,
    insert_account,
    start_server,
)

DEMO_EMAILS = ["billing@acme.example", "ap@globex.example", "finance@initech.example"]
CREDENTIAL_PATHS = ("auth/", "secret/")  # logins, mints, renewals and KV reads


def signing_key() -> str:
    return next(c for c in CANARIES if c.startswith("canary-signing-key-"))


def vault_requests(server: RunningServer, since: int) -> list[tuple[str, str, int]]:
    return [
        (r.label.identity, r.path, r.status)
        for r in server.runtime.identities.requests_log.since(since)
    ]


def outbox(server: RunningServer) -> list[dict[str, Any]]:
    with sqlite3.connect(server.db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM outbox ORDER BY id")]


# --- PII -----------------------------------------------------------------------------------------


async def test_account_contacts_are_stored_only_as_transit_ciphertext(
    server: RunningServer,
) -> None:
    with sqlite3.connect(server.db_path) as conn:
        stored = conn.execute("SELECT email, phone, email_masked FROM account").fetchall()
        with pytest.raises(sqlite3.IntegrityError, match="account_email_encrypted"):
            conn.execute("UPDATE account SET email = 'plain@example.org' WHERE id = 1")
    assert stored and all(
        e.startswith("vault:v1:") and p.startswith("vault:v1:") for e, p, _ in stored
    )
    raw = server.db_path.read_bytes()
    assert not any(email.encode() in raw for email in DEMO_EMAILS)
    assert "b***@acme.example" in {masked for _, _, masked in stored}  # kept in clear


async def test_view_pii_callers_get_plaintext_others_get_the_mask_without_any_decryption(
    server: RunningServer,
) -> None:
    log = server.runtime.identities.requests_log
    async with server.client("carol") as carol, server.client("erin") as erin:
        await carol.call_tool("get_account", {"account_id": 1})  # warm-up
        mark = len(log)
        shown = (await carol.call_tool("get_account", {"account_id": 1})).structured_content
        assert shown["email"] == "billing@acme.example" and not shown["pii_masked"]
        assert vault_requests(server, mark) == [("accounts", "transit/decrypt/accounts", 200)]

        mark = len(log)
        masked = (await erin.call_tool("get_account", {"account_id": 1})).structured_content
        assert masked["email"] == "b***@acme.example" and masked["pii_masked"]
        assert vault_requests(server, mark) == []


async def test_a_page_of_accounts_is_decrypted_in_one_vault_request(server: RunningServer) -> None:
    log = server.runtime.identities.requests_log
    async with server.client("carol") as carol:
        await carol.call_tool("list_accounts", {})
        mark = len(log)
        page = (await carol.call_tool("list_accounts", {"limit": 5})).structured_content
    assert page["count"] >= 5 and not any(a["pii_masked"] for a in page["accounts"])
    assert vault_requests(server, mark) == [("accounts", "transit/decrypt/accounts", 200)]


# --- signed outbox -------------------------------------------------------------------------------


async def test_every_ticket_change_queues_a_notification_signed_with_the_tickets_key(
    server: RunningServer, vault_admin: hvac.Client
) -> None:
    before = len(outbox(server))
    async with server.client("alice") as alice:
        created = await alice.call_tool(
            "create_ticket", {"title": "Printer on fire", "description": "secret customer text"}
        )
        ticket = created.structured_content["id"]
        await alice.call_tool("update_ticket", {"ticket_id": ticket, "priority": "high"})
        await alice.call_tool("close_ticket", {"ticket_id": ticket, "resolution": "Put it out."})
    rows = outbox(server)[before:]
    assert [r["topic"] for r in rows] == ["ticket.created", "ticket.updated", "ticket.closed"]
    version = vault_admin.secrets.kv.v2.read_secret_metadata(
        "tools/tickets/notifications", mount_point="secret"
    )["data"]["current_version"]
    for row in rows:
        expected = hmac.new(signing_key().encode(), row["payload"].encode(), hashlib.sha256)
        assert hmac.compare_digest(row["signature"], expected.hexdigest())
        assert row["key_version"] == version and row["subject_id"] == ticket
        payload = json.loads(row["payload"])
        assert payload["actor"] == "alice" and "secret customer text" not in row["payload"]
        assert signing_key() not in json.dumps(row)


async def test_a_tampered_notification_no_longer_verifies(server: RunningServer) -> None:
    async with server.client("alice") as alice:
        await alice.call_tool("create_ticket", {"title": "Verify me"})
    row = outbox(server)[-1]
    forged = row["payload"].replace('"actor":"alice"', '"actor":"mallory"')
    expected = hmac.new(signing_key().encode(), forged.encode(), hashlib.sha256).hexdigest()
    assert forged != row["payload"] and not hmac.compare_digest(row["signature"], expected)


# --- steady state: counted on the wire -----------------------------------------------------------


async def test_steady_state_tool_calls_make_no_identity_or_secret_request_to_vault(
    server: RunningServer,
) -> None:
    log = server.runtime.identities.requests_log
    account = insert_account(server.db_path)
    async with server.client("alice") as alice, server.client("erin") as erin:
        await alice.call_tool("create_ticket", {"title": "Warm the cache"})
        mark = len(log)
        calls = 0
        for i in range(10):
            made = await alice.call_tool("create_ticket", {"title": f"Steady {i}"})
            ticket = made.structured_content["id"]
            await alice.call_tool("update_ticket", {"ticket_id": ticket, "priority": "low"})
            await alice.call_tool("get_ticket", {"ticket_id": ticket})
            await alice.call_tool("list_tickets", {"limit": 5})
            await erin.call_tool("get_account", {"account_id": account})  # masked: no decrypt
            calls += 5
    made_requests = vault_requests(server, mark)
    print(f"{len(made_requests)} Vault requests for {calls} tool calls at steady state")
    assert made_requests == []


# --- sealed mid-run ------------------------------------------------------------------------------


@pytest.fixture
def server_on_own_vault(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
    fresh_openbao: Callable[..., OpenBao],
) -> Iterator[tuple[OpenBao, RunningServer]]:
    vault = fresh_openbao()
    encrypt_fixture_contacts(hvac.Client(url=vault.address, token=vault.root_token, timeout=5))
    # No KV caching, so every ticket write needs Vault: the seal is felt at once.
    settings = make_settings(pdp, vault=vault, vault_secret_cache_seconds=0)
    running = start_server(settings, token)
    yield vault, running
    running.stop()


async def test_vault_sealed_mid_run_fails_secret_needing_calls_closed_then_recovers(
    server_on_own_vault: tuple[OpenBao, RunningServer],
) -> None:
    vault, server = server_on_own_vault
    admin = hvac.Client(url=vault.address, token=vault.root_token, timeout=5)
    async with server.client("alice") as alice, server.client("carol") as carol:
        assert (await alice.call_tool("create_ticket", {"title": "Before"})).structured_content
        account = (await carol.call_tool("get_account", {"account_id": 1})).structured_content
        assert not account["pii_masked"]

        admin.sys.seal()
        before = db_snapshot(server.db_path)
        for call in (
            alice.call_tool("create_ticket", {"title": "During the seal"}),
            alice.call_tool("close_ticket", {"ticket_id": 1, "resolution": "Not now"}),
            carol.call_tool("get_account", {"account_id": 1}),
            carol.call_tool("update_plan", {"account_id": 2, "plan": "enterprise"}),
        ):
            with pytest.raises(ToolError) as failed:
                await call
            assert str(failed.value) == UNAVAILABLE_TEXT
        assert db_snapshot(server.db_path) == before

        admin.sys.submit_unseal_key(vault.unseal_key)
        assert (await alice.call_tool("create_ticket", {"title": "After"})).structured_content
        again = (await carol.call_tool("get_account", {"account_id": 1})).structured_content
        assert again["email"] == account["email"]
