"""The PDP down, hung, or answering garbage: every operation is denied, nothing runs, lists fail
visibly, and service comes back on its own when the PDP does."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cerbos.effect.v1 import effect_pb2
from cerbos.response.v1 import response_pb2
from cerbos.svc.v1 import svc_pb2_grpc
from mcp import MCPError

from ops.devstack import PDP, POLICIES, free_port, start_pdp
from server.authz.decisions import ResourceRef
from server.authz.errors import AUTHORIZATION_UNAVAILABLE, AuthorizationUnavailable
from server.authz.pdp import PolicyDecisionPoint
from server.edge.principal import Principal
from server.settings import Settings
from tests.support import GrpcServicerThread, RunningServer, db_snapshot, start_server

ALICE = Principal(id="alice", roles=("support_agent",), department="support", teams=("tier1",))


@pytest.fixture
def own_pdp(cerbos_bin: Path, tmp_path: Path) -> Iterator[Callable[[], PDP]]:
    """A PDP for this test only (it will be stopped); call the yielded function to (re)start it."""
    ports = {"grpc_port": free_port(), "http_port": free_port()}
    started: list[PDP] = []

    def start() -> PDP:
        started.append(start_pdp(cerbos_bin, workdir=tmp_path / "pdp", **ports))
        return started[-1]

    yield start
    for pdp in started:
        if pdp.process.alive():
            os.kill(pdp.process.pid, signal.SIGCONT)  # in case a test left it stopped
        pdp.process.stop()


@pytest.fixture
def stack(
    own_pdp: Callable[[], PDP], make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[tuple[PDP, RunningServer]]:
    pdp = own_pdp()
    server = start_server(make_settings(pdp), token)
    yield pdp, server
    server.stop()


async def assert_unavailable(call: Any) -> None:
    with pytest.raises(MCPError) as failure:
        await call
    assert failure.value.error.code == AUTHORIZATION_UNAVAILABLE
    assert "Authorization unavailable" in failure.value.error.message


async def assert_everything_denied(server: RunningServer) -> None:
    before = db_snapshot(server.db_path)
    reached = len(server.reached.calls)
    async with server.client("alice") as client:
        await assert_unavailable(client.list_tools())
        await assert_unavailable(client.list_resource_templates())
        await assert_unavailable(client.list_prompts())
        await assert_unavailable(client.call_tool("create_ticket", {"title": "During the outage"}))
        await assert_unavailable(client.call_tool("no_such_tool", {}))
        await assert_unavailable(client.read_resource("ticket://1"))
        await assert_unavailable(client.get_prompt("triage_ticket", {"ticket_id": "1"}))
    assert server.reached.calls[reached:] == []
    assert db_snapshot(server.db_path) == before


async def works(server: RunningServer) -> bool:
    try:
        async with server.client("alice") as client:
            return "create_ticket" in {t.name for t in await client.list_tools()}
    except MCPError:
        return False


async def wait_until_works(server: RunningServer, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if await works(server):
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"service did not recover within {within}s")


async def test_pdp_down_denies_everything_then_recovers_without_restart(
    stack: tuple[PDP, RunningServer], own_pdp: Callable[[], PDP]
) -> None:
    pdp, server = stack
    assert await works(server)
    pdp.process.stop()
    await assert_everything_denied(server)
    own_pdp()  # same ports, as after a PDP restart
    recovered_after = await wait_until_works(server, within=15)
    print(f"recovered {recovered_after:.2f}s after the PDP was healthy again")


async def test_hung_pdp_denies_at_the_deadline(stack: tuple[PDP, RunningServer]) -> None:
    pdp, server = stack
    assert await works(server)
    os.kill(pdp.process.pid, signal.SIGSTOP)  # a real hang: the process accepts nothing
    try:
        async with server.client("alice") as client:
            started = time.monotonic()
            await assert_unavailable(client.call_tool("list_tickets", {}))
            waited = time.monotonic() - started
        # Not a speed target: proof that the call is bounded by the deadline, not by the hang.
        assert waited < server.settings.pdp_timeout_seconds + 4
    finally:
        os.kill(pdp.process.pid, signal.SIGCONT)
    await wait_until_works(server, within=15)


# --- a PDP that answers, but nonsense ---------------------------------------------------------


class GarbageAnsweringPDP(svc_pb2_grpc.CerbosServiceServicer):
    """A fake PDP for faults the real one cannot produce: replies that do not match the request."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def CheckResources(
        self, request: Any, context: Any
    ) -> response_pb2.CheckResourcesResponse:
        allow_all = {a: effect_pb2.EFFECT_ALLOW for a in request.resources[0].actions}
        results = [
            response_pb2.CheckResourcesResponse.ResultEntry(
                resource=response_pb2.CheckResourcesResponse.ResultEntry.Resource(
                    id=e.resource.id, kind=e.resource.kind
                ),
                actions={a: effect_pb2.EFFECT_ALLOW for a in e.actions},
            )
            for e in request.resources
        ]
        if self.mode == "fewer_results":
            results = results[:-1]
        elif self.mode == "other_resource":
            results[0].resource.id = "something_else"
        elif self.mode == "missing_action":
            results[0].ClearField("actions")
        elif self.mode == "unspecified_effect":
            for action in allow_all:
                results[0].actions[action] = effect_pb2.EFFECT_UNSPECIFIED
        return response_pb2.CheckResourcesResponse(request_id=request.request_id, results=results)


def garbage_pdp(mode: str) -> GrpcServicerThread:
    return GrpcServicerThread(GarbageAnsweringPDP(mode))


TOOLS = [ResourceRef("mcp_tool", "a", {}), ResourceRef("mcp_tool", "b", {})]


async def decide(address: str) -> Any:
    pdp = PolicyDecisionPoint(address, timeout_seconds=0.5, max_resources_per_request=50)
    await pdp.start()
    try:
        return await pdp.check(ALICE, [(ref, ("list", "call")) for ref in TOOLS], request_id="r1")
    finally:
        await pdp.close()


@pytest.mark.parametrize("mode", ["fewer_results", "other_resource", "missing_action"])
async def test_reply_that_does_not_match_the_request_is_an_outage_not_an_allow(mode: str) -> None:
    with garbage_pdp(mode) as fake, pytest.raises(AuthorizationUnavailable) as failure:
        await decide(f"127.0.0.1:{fake.port}")
    assert failure.value.reason == "invalid_reply"


async def test_an_effect_other_than_allow_is_a_deny() -> None:
    with garbage_pdp("unspecified_effect") as fake:
        result = await decide(f"127.0.0.1:{fake.port}")
    assert not result.decisions[0].allowed("list")
    assert result.decisions[1].allowed("list")


async def test_a_listener_speaking_no_grpc_is_an_outage() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def answer_garbage() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nthis is not gRPC" * 10)
            conn.close()

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()
    try:
        with pytest.raises(AuthorizationUnavailable) as failure:
            await decide(f"127.0.0.1:{listener.getsockname()[1]}")
        assert failure.value.reason in ("pdp_unavailable", "pdp_timeout")
    finally:
        stop.set()
        thread.join(5)
        listener.close()


async def test_server_on_a_garbage_pdp_fails_lists_visibly(
    make_settings: Callable[..., Settings], token: Callable[..., str]
) -> None:
    with garbage_pdp("fewer_results") as fake:
        address = f"127.0.0.1:{fake.port}"
        fake_pdp = PDP(
            process=None, grpc_address=address, http_url="", audit_log=Path("/nonexistent")
        )  # type: ignore[arg-type]
        server = start_server(make_settings(fake_pdp), token)
        try:
            await assert_everything_denied(server)
        finally:
            server.stop()


async def test_policy_edit_applies_without_restarting_anything(
    cerbos_bin: Path,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    pdp = start_pdp(cerbos_bin, workdir=tmp_path / "pdp", policies=policies)
    server = start_server(make_settings(pdp), token)
    try:

        async def mallory_tools() -> set[str]:
            async with server.client("mallory") as client:
                return {t.name for t in await client.list_tools()}

        assert await mallory_tools() == {"create_ticket"}
        rule = policies / "derived_roles" / "mcp_components.yaml"
        rule.write_text(
            rule.read_text().replace(
                "'\"self_service\" in R.attr.tags'", "'\"nothing\" in R.attr.tags'"
            )
        )
        started = time.monotonic()
        while await mallory_tools():
            assert time.monotonic() - started < 15, "policy change not applied"
            await asyncio.sleep(0.2)
        print(f"policy change applied after {time.monotonic() - started:.1f}s")
    finally:
        server.stop()
        pdp.process.stop()
