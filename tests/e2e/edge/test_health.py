"""Liveness and readiness: /livez while the process serves HTTP; /readyz true only while the PDP
answers, every Vault identity holds a usable token and the database answers, and false, naming
only the dependency that is down, for each way it can turn false, then true again after
recovery without a restart. Real PDP, OpenBao and PostgreSQL, stopped and started for real."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import hvac

from ops.devstack import PDP, OpenBao, free_port, start_pdp
from server.settings import Settings
from tests.conftest import PostgresStack
from tests.support import RunningServer, start_server

ALL_OK = {"ready": True, "checks": {"pdp": "ok", "vault": "ok", "database": "ok"}}


def down(dependency: str) -> dict[str, Any]:
    checks = {name: "ok" for name in ("pdp", "vault", "database")}
    checks[dependency] = "down"
    return {"ready": False, "checks": checks}


async def readyz(server: RunningServer, path: str = "/readyz") -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{server.base_url}{path}")
    return response.status_code, response.json()


async def until_ready_is(server: RunningServer, expected: dict[str, Any], within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        status, body = await readyz(server)
        if body == expected:
            assert status == (200 if expected["ready"] else 503)
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"readiness {body} (status {status}), wanted {expected}")
        await asyncio.sleep(0.2)


async def test_livez_and_readyz_answer_without_authentication_and_reveal_nothing_else(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        live = await client.get(f"{server.base_url}/livez")
        ready = await client.get(f"{server.base_url}/readyz")
        alias = await client.get(f"{server.base_url}/healthz")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, ALL_OK)
    assert (alias.status_code, alias.json()) == (200, ALL_OK)
    for text in (live.text, ready.text):
        assert "127.0.0.1" not in text and "version" not in text.lower()
        assert str(server.settings.port) not in text
    assert ready.headers["cache-control"] == "no-store"


async def test_probes_make_no_vault_request_while_every_token_is_fresh(
    server: RunningServer,
) -> None:
    log = server.runtime.identities.requests_log
    mark = len(log)
    for _ in range(5):
        assert (await readyz(server))[0] == 200
    assert log.since(mark) == []


async def test_readiness_turns_false_while_the_pdp_is_stopped_and_back_after_its_restart(
    cerbos_bin: Path,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
    tmp_path: Path,
) -> None:
    grpc_port, http_port = free_port(), free_port()
    pdp = start_pdp(cerbos_bin, workdir=tmp_path / "pdp", grpc_port=grpc_port, http_port=http_port)
    server = start_server(make_settings(pdp), token)
    try:
        await until_ready_is(server, ALL_OK, within=10)
        pdp.process.stop()
        await until_ready_is(server, down("pdp"), within=10)
        pdp = start_pdp(
            cerbos_bin, workdir=tmp_path / "pdp", grpc_port=grpc_port, http_port=http_port
        )
        await until_ready_is(server, ALL_OK, within=15)
    finally:
        server.stop()
        pdp.process.stop()


async def test_readiness_turns_false_once_vault_stays_sealed_and_back_after_unseal(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
    fresh_openbao: Callable[..., OpenBao],
) -> None:
    vault = fresh_openbao()
    ttl = 3
    server = start_server(make_settings(pdp, vault=vault, vault_tool_token_ttl_seconds=ttl), token)
    try:
        await until_ready_is(server, ALL_OK, within=10)
        hvac.Client(url=vault.address, token=vault.root_token, timeout=5).sys.seal()
        # The tokens in hand keep the server ready until they are no longer usable; then not.
        await until_ready_is(server, down("vault"), within=4 * ttl)
        hvac.Client(url=vault.address, timeout=5).sys.submit_unseal_key(vault.unseal_key)
        await until_ready_is(server, ALL_OK, within=10)  # re-minted, no restart
    finally:
        server.stop()


async def test_readiness_turns_false_while_the_database_is_stopped_and_back_after_its_restart(
    postgres_stack: PostgresStack,
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    settings = make_settings(pdp, vault=postgres_stack.vault, database_url=postgres_stack.url)
    server = start_server(settings, token)
    try:
        await until_ready_is(server, ALL_OK, within=10)
        postgres_stack.postgres.stop()
        await until_ready_is(server, down("database"), within=10)
        postgres_stack.postgres.start()
        await until_ready_is(server, ALL_OK, within=15)
    finally:
        server.stop()
