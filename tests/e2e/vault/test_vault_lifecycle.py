"""Vault down, sealed, or tokens expiring: the server refuses to start without its secrets,
fails closed while Vault is sealed and recovers after unseal without a restart, and re-mints
or re-logs in before any token it uses expires. Real OpenBao servers throughout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import hvac
import pytest
import uvicorn

from ops.devstack import PDP, OpenBao, free_port
from ops.vault_bootstrap import BootstrapConfig
from server.app import create_http_app, create_server
from server.runtime import build_runtime
from server.settings import Settings
from server.vault.client import (
    UNAVAILABLE_TEXT,
    SecretsUnavailable,
    VaultRequestLog,
    VaultStartupError,
)
from tests.support import open_identities

SIGNING_KEY = "tools/tickets/notifications"


def seal(vault: OpenBao) -> None:
    hvac.Client(url=vault.address, token=vault.root_token, timeout=5).sys.seal()
    assert vault.health_status() == 503


def unseal(vault: OpenBao) -> None:
    hvac.Client(url=vault.address, timeout=5).sys.submit_unseal_key(vault.unseal_key)
    assert vault.health_status() == 200


async def refuses_to_start(settings: Settings) -> str:
    """Start the runtime as the lifespan does; return the refusal's message."""
    runtime = build_runtime(settings)
    with pytest.raises(VaultStartupError) as refused:
        await runtime.start()
    return str(refused.value)


async def never_ready_over_http(settings: Settings) -> None:
    app = create_http_app(create_server(settings), settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="critical")
    server = uvicorn.Server(config)
    with pytest.raises(SystemExit):  # uvicorn's way of saying "startup failed"
        await server.serve()
    assert not server.started
    with pytest.raises(ConnectionRefusedError):  # nothing listens: /healthz never said ready
        await asyncio.open_connection("127.0.0.1", settings.port)


async def test_vault_unreachable_at_startup_the_server_refuses_with_a_clear_message(
    pdp: PDP, make_settings: Callable[..., Settings]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(pdp, vault_address=nowhere)
    started = time.monotonic()
    message = await refuses_to_start(settings)
    assert message == (
        f"Vault at {nowhere} is unreachable: the server will not start without its secrets "
        "(no fallback)"
    )
    assert time.monotonic() - started < 3 * settings.vault_timeout_seconds
    await never_ready_over_http(make_settings(pdp, vault_address=nowhere))


async def test_vault_sealed_at_startup_the_server_refuses_with_a_clear_message(
    pdp: PDP, make_settings: Callable[..., Settings], fresh_openbao: Callable[..., OpenBao]
) -> None:
    vault = fresh_openbao()
    settings = make_settings(pdp, vault=vault)
    seal(vault)
    message = await refuses_to_start(settings)
    assert message.startswith(f"Vault at {vault.address} is sealed: the server will not start")
    # The credential was not spent: once unsealed, the same server starts.
    unseal(vault)
    runtime = build_runtime(settings)
    await runtime.start()
    await runtime.close()


async def test_vault_sealed_mid_run_fails_closed_then_recovers_after_unseal(
    pdp: PDP, make_settings: Callable[..., Settings], fresh_openbao: Callable[..., OpenBao]
) -> None:
    vault = fresh_openbao()
    async with open_identities(make_settings(pdp, vault=vault)) as identities:
        accounts = identities.tool("accounts")
        before = await accounts.encrypt("accounts", ["before the seal"])
        seal(vault)
        with pytest.raises(SecretsUnavailable) as failed:
            await accounts.decrypt("accounts", before)
        assert failed.value.reason == "sealed" and str(failed.value) == UNAVAILABLE_TEXT
        unseal(vault)
        # Same identities object, no restart: the same leases work again.
        assert await accounts.decrypt("accounts", before) == ["before the seal"]


async def test_short_lived_children_are_reminted_before_expiry_and_no_expired_token_is_used(
    pdp: PDP, make_settings: Callable[..., Settings]
) -> None:
    ttl = 2
    settings = make_settings(pdp, vault_tool_token_ttl_seconds=ttl, vault_secret_cache_seconds=0)
    async with open_identities(settings) as identities:
        tickets = identities.tool("tickets")
        deadline = time.monotonic() + 3.5 * ttl
        while time.monotonic() < deadline:
            await tickets.read_secret(SIGNING_KEY)
            await asyncio.sleep(0.05)
        log = identities.requests_log
    mints = [r for r in log.requests if r.path == "auth/token/create/mcp-tickets"]
    reads = [r for r in log.requests if r.label.identity == "tickets"]
    assert len(mints) >= 4  # one at startup, then one per 2/3 of the TTL
    assert {r.status for r in reads} == {200}, [r for r in reads if r.status != 200]
    # Every request went out before the expiry of the token it carried.
    late = [r for r in reads if r.label.expires_at is None or r.at >= r.label.expires_at]
    assert late == []
    assert len({r.label.generation for r in reads}) >= 4


async def test_server_token_is_renewed_then_replaced_by_a_new_login_at_its_max_ttl(
    pdp: PDP, make_settings: Callable[..., Settings], fresh_openbao: Callable[..., OpenBao]
) -> None:
    vault = fresh_openbao(BootstrapConfig(server_token_ttl=6, server_token_max_ttl=9))
    settings = make_settings(
        pdp, vault=vault, vault_tool_token_ttl_seconds=2, vault_secret_cache_seconds=0
    )
    async with open_identities(settings) as identities:
        tickets = identities.tool("tickets")
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            await tickets.read_secret(SIGNING_KEY)
            await asyncio.sleep(0.05)
        log = identities.requests_log
    paths = [r.path for r in log.requests if r.label.identity == "server"]
    assert paths.count("auth/token/create/mcp-tickets") >= 6
    assert paths.count("auth/token/renew-self") >= 1
    logins = [r for r in log.requests if r.path == "auth/approle/login"]
    assert len(logins) >= 2 and {r.status for r in logins} == {200}, logins
    used = [r for r in log.requests if r.label.identity in ("server", "tickets")]
    assert {r.status for r in used} <= {200, 204}, [r for r in used if r.status >= 300]
    late = [r for r in used if r.label.expires_at is None or r.at >= r.label.expires_at]
    assert late == []


async def test_a_revoked_child_token_is_reminted_on_its_first_403(
    pdp: PDP, make_settings: Callable[..., Settings], vault_admin: hvac.Client
) -> None:
    async with open_identities(make_settings(pdp, vault_secret_cache_seconds=0)) as identities:
        tickets = identities.tool("tickets")
        await tickets.read_secret(SIGNING_KEY)
        held = identities._children["tickets"]
        vault_admin.auth.token.revoke(held.lease.token)  # e.g. an operator's revocation
        assert (await tickets.read_secret(SIGNING_KEY)).data["signing_key"]
        assert identities._children["tickets"].lease.generation > held.lease.generation


async def test_a_revoked_server_token_leads_to_one_new_login(
    pdp: PDP, make_settings: Callable[..., Settings], vault_admin: hvac.Client
) -> None:
    settings = make_settings(pdp, vault_secret_cache_seconds=0)
    async with open_identities(settings) as identities:
        assert identities._server is not None
        first = identities._server.lease
        # Revoking the server's token also revokes every child it minted.
        vault_admin.auth.token.revoke(first.token)
        assert (await identities.tool("tickets").read_secret(SIGNING_KEY)).data["signing_key"]
        assert identities._server.lease.generation > first.generation
        logins = [r for r in identities.requests_log.requests if r.path == "auth/approle/login"]
        assert len(logins) == 2


async def test_steady_state_reads_make_no_vault_request(
    pdp: PDP, make_settings: Callable[..., Settings]
) -> None:
    async with open_identities(make_settings(pdp)) as identities:
        tickets = identities.tool("tickets")
        await tickets.read_secret(SIGNING_KEY)
        mark = len(identities.requests_log)
        for _ in range(50):
            await tickets.read_secret(SIGNING_KEY)
        assert identities.requests_log.since(mark) == []


def test_the_request_log_counts_real_http_requests(openbao: OpenBao) -> None:
    from server.vault.client import ClientLabel, VaultEndpoint, make_client

    log = VaultRequestLog()
    client = make_client(
        VaultEndpoint(openbao.address, 2, True), None, label=ClientLabel("probe"), requests_log=log
    )
    client.sys.read_seal_status()
    client.sys.read_health_status(method="GET")
    assert [(r.method, r.path, r.status) for r in log.requests] == [
        ("GET", "sys/seal-status", 200),
        ("GET", "sys/health", 200),
    ]
