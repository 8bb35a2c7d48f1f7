"""The decision cache changes no outcome beyond its bound: a revoked permission is refused at
most the TTL after the PDP has reloaded the policy, a dead PDP is not covered by a warm cache, a
hung one only until the TTL, and no decision outlives the token it was made for."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mcp import MCPError

from ops.devstack import PDP, POLICIES, free_port, start_pdp, wait_until
from server.authz.components import tool_resource
from server.authz.decisions import ResourceRef
from server.authz.errors import AUTHORIZATION_UNAVAILABLE
from server.authz.pdp import PolicyDecisionPoint
from server.edge.principal import Principal
from server.settings import Settings
from tests.support import RunningServer, start_server

MALLORY = Principal(id="mallory", roles=("contractor",), department="external")


@pytest.fixture
def own_pdp(cerbos_bin: Path, tmp_path: Path) -> Iterator[Callable[..., PDP]]:
    """A PDP of this test's own (it gets stopped, or its policies edited)."""
    started: list[PDP] = []

    def start(policies: Path = POLICIES) -> PDP:
        started.append(
            start_pdp(
                cerbos_bin,
                workdir=tmp_path / f"pdp-{len(started)}",
                policies=policies,
                grpc_port=free_port(),
            )
        )
        return started[-1]

    yield start
    for pdp in started:
        if pdp.process.alive():
            os.kill(pdp.process.pid, signal.SIGCONT)  # in case a test left it stopped
        pdp.process.stop()


def stats(server: RunningServer) -> dict[str, int]:
    cache = server.runtime.pdp.cache
    assert cache is not None, "the decision cache is off"
    return cache.stats()


async def visible_tools(server: RunningServer, who: str = "alice", **options: object) -> set[str]:
    async with server.client(who, **options) as client:  # type: ignore[arg-type]
        return {t.name for t in await client.list_tools()}


async def test_a_revoked_permission_is_refused_within_the_ttl_after_the_pdp_reloads(
    own_pdp: Callable[..., PDP],
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    ttl = 2.0
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    pdp = own_pdp(policies)
    server = start_server(make_settings(pdp, authz_cache_seconds=ttl), token)
    # The PDP itself, asked directly and never cached: when does it apply the edit?
    probe = PolicyDecisionPoint(pdp.grpc_address, timeout_seconds=2, max_resources_per_request=50)
    await probe.start()
    create = next(
        t for t in await server.mcp.list_tools(run_middleware=False) if t.name == "create_ticket"
    )
    ref: ResourceRef = tool_resource(create)

    async def pdp_allows() -> bool:
        result = await probe.check(MALLORY, [(ref, ("call",))], request_id="probe")
        return result.decisions[0].allowed("call")

    calls: list[tuple[float, bool]] = []  # (started, allowed)
    try:
        async with server.client("mallory") as client:

            async def call() -> None:
                started = time.monotonic()
                result = await client.call_tool(
                    "create_ticket", {"title": "Still allowed?"}, raise_on_error=False
                )
                calls.append((started, not result.is_error))

            await call()
            assert calls[-1][1], "mallory may create tickets before the edit"
            assert await pdp_allows()
            rule = policies / "derived_roles" / "mcp_components.yaml"
            rule.write_text(
                rule.read_text().replace(
                    "'\"self_service\" in R.attr.tags'", "'\"nothing\" in R.attr.tags'"
                )
            )
            edited = time.monotonic()
            refused_by_pdp = None
            while time.monotonic() - edited < 20:
                await call()
                if refused_by_pdp is None and not await pdp_allows():
                    refused_by_pdp = time.monotonic()
                if refused_by_pdp is not None and time.monotonic() > refused_by_pdp + ttl + 1:
                    break
                await asyncio.sleep(0.05)
    finally:
        await probe.close()
        server.stop()
    assert refused_by_pdp is not None, "the PDP never applied the edit"
    late = [allowed for started, allowed in calls if started >= refused_by_pdp + ttl]
    assert late, "no call after the bound"
    assert not any(late), "a call was allowed more than the TTL after the PDP refused"
    reload_seconds = refused_by_pdp - edited
    last_allowed = max(started for started, allowed in calls if allowed) - refused_by_pdp
    print(f"PDP reloaded after {reload_seconds:.1f}s; last allow {last_allowed:+.2f}s after that")


async def test_a_dead_pdp_is_not_covered_by_a_warm_cache(
    own_pdp: Callable[..., PDP],
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    pdp = own_pdp()
    # The longest TTL there is: only the PDP's state can end these entries early.
    server = start_server(make_settings(pdp, authz_cache_seconds=10), token)
    try:
        expected = await visible_tools(server)
        hits = stats(server)["hits"]
        assert await visible_tools(server) == expected
        assert stats(server)["hits"] > hits, "the second list did not come from the cache"
        pdp.process.stop()
        wait_until(lambda: not server.runtime.pdp.ready(), timeout=10, what="channel down")
        with pytest.raises(MCPError) as failure:
            await visible_tools(server)
        assert failure.value.error.code == AUTHORIZATION_UNAVAILABLE
        assert len(server.runtime.pdp.cache or ()) == 0  # the failure flushed every entry
    finally:
        server.stop()


async def test_a_hung_pdp_is_covered_by_a_warm_cache_only_until_the_ttl(
    own_pdp: Callable[..., PDP],
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    ttl = 2.0
    pdp = own_pdp()
    server = start_server(make_settings(pdp, authz_cache_seconds=ttl), token)
    outcomes: list[tuple[float, bool]] = []  # (started, listed)
    refusals: list[int] = []
    try:
        expected = await visible_tools(server)
        warmed = time.monotonic()  # every entry was asked for before this
        os.kill(pdp.process.pid, signal.SIGSTOP)  # a real hang: the connection stays up
        while time.monotonic() - warmed < ttl + 3:
            started = time.monotonic()
            try:
                listed = await visible_tools(server) == expected
            except MCPError as failure:
                refusals.append(failure.error.code)
                listed = False
            outcomes.append((started, listed))
    finally:
        os.kill(pdp.process.pid, signal.SIGCONT)
        server.stop()
    assert any(listed for _, listed in outcomes), "the warm cache served nothing"
    late = [listed for started, listed in outcomes if started >= warmed + ttl]
    assert late and not any(late), "a decision was served past the TTL with the PDP hung"
    assert set(refusals) == {AUTHORIZATION_UNAVAILABLE}


async def test_no_cached_decision_outlives_the_token_it_was_made_for(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> None:
    server = start_server(make_settings(pdp, authz_cache_seconds=10), token)
    try:
        short = token("alice", ttl_seconds=2)
        expires = time.time() + 2
        long = token("alice", ttl_seconds=600)  # the same claims, a later expiry
        expected = await visible_tools(server, token=short)
        before = stats(server)
        assert await visible_tools(server, token=long) == expected
        shared = stats(server)
        assert shared["misses"] == before["misses"], "the same question was asked again"
        await asyncio.sleep(max(0.0, expires + 0.2 - time.time()))
        assert await visible_tools(server, token=long) == expected
        assert stats(server)["misses"] > shared["misses"], "an entry outlived its token"
    finally:
        server.stop()
