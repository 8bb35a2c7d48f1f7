"""Each tool reaches only its own secrets, through its own Vault identity; the server's own token
reaches none. Proven against the real OpenBao, through the code path tools use and directly with
each token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import hvac
import hvac.exceptions
import pytest
from fastmcp import FastMCP
from fastmcp.dependencies import Depends
from fastmcp.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from ops.devstack import PDP, OpenBao
from server.capability.inject import tool_identity
from server.settings import Settings
from server.vault.client import FORBIDDEN_TEXT, SecretsUnavailable
from server.vault.identities import Identities, ToolIdentity
from tests.support import (
    CANARIES,
    db_snapshot,
    live_token,
    open_identities,
    requests_by,
    start_server,
)

SIGNING_KEY = "tools/tickets/notifications"


@pytest.fixture
async def identities(pdp: PDP, make_settings: Callable[..., Settings]) -> AsyncIterator[Identities]:
    async with open_identities(make_settings(pdp)) as opened:
        yield opened


def direct(openbao: OpenBao, token: str) -> hvac.Client:
    return hvac.Client(url=openbao.address, token=token, timeout=5)


async def test_each_identity_holds_exactly_its_own_policy(identities: Identities) -> None:
    assert identities._server is not None
    assert identities._server.lease.policies == ("mcp-server",)
    for name in ("settings", "tickets", "accounts"):
        assert identities._children[name].lease.policies == (f"mcp-{name}",)


async def test_tickets_identity_cannot_use_the_accounts_transit_key(
    identities: Identities, openbao: OpenBao
) -> None:
    ciphertext = (await identities.tool("accounts").encrypt("accounts", ["pii@example.org"]))[0]
    tickets = identities.tool("tickets")
    mark = len(identities.requests_log)

    with pytest.raises(SecretsUnavailable) as denied:
        await tickets.decrypt("accounts", [ciphertext])
    assert denied.value.reason == "forbidden" and str(denied.value) == FORBIDDEN_TEXT
    with pytest.raises(SecretsUnavailable):
        await tickets.encrypt("accounts", ["anything"])
    # A 403 may mean "expired": the identity was re-minted once, then refused again.
    assert requests_by(identities.requests_log, mark, "tickets") == [
        ("POST", "transit/decrypt/accounts", 403),
        ("POST", "transit/decrypt/accounts", 403),
        ("POST", "transit/encrypt/accounts", 403),
        ("POST", "transit/encrypt/accounts", 403),
    ]

    token = direct(openbao, live_token(identities, "tickets"))
    with pytest.raises(hvac.exceptions.Forbidden):
        token.secrets.transit.decrypt_data(name="accounts", ciphertext=ciphertext)
    with pytest.raises(hvac.exceptions.Forbidden):
        token.secrets.transit.read_key(name="accounts")


async def test_accounts_identity_cannot_read_the_tickets_signing_key(
    identities: Identities, openbao: OpenBao
) -> None:
    assert (await identities.tool("tickets").read_secret(SIGNING_KEY)).data["signing_key"]
    with pytest.raises(SecretsUnavailable) as denied:
        await identities.tool("accounts").read_secret(SIGNING_KEY)
    assert denied.value.reason == "forbidden"

    token = direct(openbao, live_token(identities, "accounts"))
    with pytest.raises(hvac.exceptions.Forbidden):
        token.secrets.kv.v2.read_secret_version(
            path=SIGNING_KEY, mount_point="secret", raise_on_deleted_version=True
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        token.secrets.kv.v2.read_secret_version(
            path="mcp/server", mount_point="secret", raise_on_deleted_version=True
        )


async def test_a_tool_identity_cannot_mint_tokens_or_look_itself_up(
    identities: Identities, openbao: OpenBao
) -> None:
    token = direct(openbao, live_token(identities, "tickets"))
    with pytest.raises(hvac.exceptions.Forbidden):
        token.auth.token.create(role_name="mcp-accounts", ttl="60s")
    with pytest.raises(hvac.exceptions.Forbidden):
        token.auth.token.lookup_self()  # no default policy: not even that


async def test_the_servers_own_token_reaches_no_tool_secret_and_no_key(
    identities: Identities, openbao: OpenBao
) -> None:
    server = direct(openbao, live_token(identities, "server"))
    for path in (SIGNING_KEY, "mcp/server"):
        with pytest.raises(hvac.exceptions.Forbidden):
            server.secrets.kv.v2.read_secret_version(
                path=path, mount_point="secret", raise_on_deleted_version=True
            )
    with pytest.raises(hvac.exceptions.Forbidden):
        server.secrets.transit.encrypt_data(name="accounts", plaintext="eA==")
    # It mints only through the identities' token roles, and only their own policies.
    with pytest.raises(hvac.exceptions.Forbidden):
        server.auth.token.create(policies=["mcp-accounts"], ttl="60s")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        server.auth.token.create(role_name="mcp-tickets", policies=["mcp-accounts"], ttl="60s")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        server.auth.token.create(role_name="mcp-tickets", policies=["root"], ttl="60s")


async def test_a_tool_identity_exposes_no_token(identities: Identities) -> None:
    tickets = identities.tool("tickets")
    await tickets.read_secret(SIGNING_KEY)
    tokens = {live_token(identities, n) for n in ("server", "settings", "tickets", "accounts")}
    reachable = {repr(tickets), *(repr(v) for v in vars(tickets).values() if v is not identities)}
    assert not any(t in text for t in tokens for text in reachable)
    assert not any(isinstance(v, str) and v in tokens for v in vars(tickets).values())


# --- through MCP: a tool that reaches for another tool's key ------------------------------------


def add_prying_tool(mcp: FastMCP[Any]) -> None:
    @mcp.tool(
        tags={"tickets"},
        meta={"department": "support", "sensitivity": "internal"},
        annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False),
    )
    async def summarise_contact(
        ciphertext: Annotated[str, Field(description="An encrypted contact field.")],
        identity: ToolIdentity = Depends(tool_identity("tickets")),
    ) -> str:
        """A (misbehaving) tickets tool trying to decrypt account PII with its own identity."""
        return (await identity.decrypt("accounts", [ciphertext]))[0]


async def test_a_tool_reaching_for_another_tools_key_over_mcp_gets_a_safe_denial(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> None:
    server = start_server(make_settings(pdp), token, prepare=add_prying_tool)
    try:
        ciphertext = (
            await server.runtime.identities.tool("accounts").encrypt("accounts", ["+1 555 0100"])
        )[0]
        before = db_snapshot(server.db_path)
        mark = len(server.runtime.identities.requests_log)
        # A tool the policy has not released is for admins only.
        async with server.client("dave") as client:
            with pytest.raises(ToolError) as denied:
                await client.call_tool("summarise_contact", {"ciphertext": ciphertext})
        assert str(denied.value) == FORBIDDEN_TEXT
        assert "+1 555 0100" not in str(denied.value)
        assert not any(c in str(denied.value) for c in CANARIES)
        log = server.runtime.identities.requests_log
        assert ("POST", "transit/decrypt/accounts", 403) in requests_by(log, mark, "tickets")
        assert requests_by(log, mark, "accounts") == []  # no other identity was used
        assert db_snapshot(server.db_path) == before
    finally:
        server.stop()


def test_vault_clients_never_pick_up_a_token_from_the_environment_or_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from server.vault.client import ClientLabel, VaultEndpoint, VaultRequestLog, make_client

    (tmp_path / ".vault-token").write_text("token-from-home")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("VAULT_TOKEN", "token-from-env")
    client = make_client(
        VaultEndpoint("http://127.0.0.1:1", 1, True),
        None,
        label=ClientLabel("probe"),
        requests_log=VaultRequestLog(),
    )
    assert client.token == "" and client.adapter.token == ""
