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
from server.authz import components
from server.authz.decisions import ResourceRef
from server.authz.errors import AUTHORIZATION_UNAVAILABLE, AuthorizationUnavailable
from server.authz.pdp import NO_MATCH, PolicyDecisionPoint
from server.edge.principal import Principal
from server.settings import Settings
from tests.support import GrpcServicerThread, RunningServer, db_snapshot, start_server
from tools.tickets.models import TICKET

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


# --- policy hot reloads -------------------------------------------------------------------------


class CountingPDP(PolicyDecisionPoint):
    """The server's PDP client, counting its CheckResources requests and retries."""

    requests = 0
    retries = 0

    async def _check_once(self, *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        return await super()._check_once(*args, **kwargs)

    def _time_for_retry(self, deadline: float, pause: float) -> bool:
        allowed = super()._time_for_retry(deadline, pause)
        self.retries += int(allowed)
        return allowed


class ReloadingPDP(svc_pb2_grpc.CerbosServiceServicer):
    """A stand-in for the moment of a policy reload, which the real PDP produces only by chance
    (for a few milliseconds): the first ``unmatched`` answers match no policy (DENY, NO_MATCH),
    the following ones ALLOW under a policy. Counts the requests it gets."""

    def __init__(self, unmatched: int, *, delay: float = 0.0) -> None:
        self.unmatched = unmatched
        self.delay = delay
        self.requests = 0

    def _answer(self, request: Any) -> response_pb2.CheckResourcesResponse:
        self.requests += 1
        reloading = self.requests <= self.unmatched
        Result = response_pb2.CheckResourcesResponse.ResultEntry
        results = []
        for entry in request.resources:
            effect = effect_pb2.EFFECT_DENY if reloading else effect_pb2.EFFECT_ALLOW
            policy = "" if reloading else f"resource.{entry.resource.kind}.vdefault"
            results.append(
                Result(
                    resource=Result.Resource(id=entry.resource.id, kind=entry.resource.kind),
                    actions={a: effect for a in entry.actions},
                    meta=Result.Meta(
                        actions={
                            a: Result.Meta.EffectMeta(matched_policy=policy) for a in entry.actions
                        }
                    ),
                )
            )
        return response_pb2.CheckResourcesResponse(request_id=request.request_id, results=results)

    async def CheckResources(
        self, request: Any, context: Any
    ) -> response_pb2.CheckResourcesResponse:
        await asyncio.sleep(self.delay)
        return self._answer(request)


async def test_an_answer_that_matched_no_policy_is_asked_again() -> None:
    stand_in = ReloadingPDP(unmatched=1)
    with GrpcServicerThread(stand_in) as fake:
        result = await decide(f"127.0.0.1:{fake.port}")
    assert stand_in.requests == 2
    assert all(d.allowed("list") and d.allowed("call") for d in result.decisions)


async def test_a_kind_without_any_policy_stays_denied_after_the_retries() -> None:
    stand_in = ReloadingPDP(unmatched=100)
    with GrpcServicerThread(stand_in) as fake:
        result = await decide(f"127.0.0.1:{fake.port}")
    # decide() allows 0.5 s: asked again after 50, 100 and 200 ms, then the deadline is near.
    assert 2 <= stand_in.requests <= 4
    assert not any(d.allowed("list") or d.allowed("call") for d in result.decisions)


async def test_no_retry_without_time_left_before_the_deadline() -> None:
    """The retry is inside the call's deadline: an answer that came late is not asked again."""
    stand_in = ReloadingPDP(unmatched=1, delay=0.4)  # decide() allows 0.5 s in all
    with GrpcServicerThread(stand_in) as fake:
        result = await decide(f"127.0.0.1:{fake.port}")
    assert stand_in.requests == 1
    assert not any(d.allowed("list") for d in result.decisions)


async def test_calls_during_policy_reloads_get_the_answers_they_get_without_one(
    cerbos_bin: Path,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    """Edit policies (derived roles, whose reload briefly leaves the policies importing them
    unmatched, and resource policies) under a running PDP while calls run: every call gets the
    answer it gets when nothing reloads.

    The deadline is raised to 2 s here: while it recompiles, the PDP answers late (hundreds of
    milliseconds on a busy two-core host), and a call past its deadline fails closed with
    "Authorization unavailable" by design. That is the PDP's behaviour; what the server can fix,
    an answer that matched no policy during the swap, is what this test looks for.
    """
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    pdp = start_pdp(cerbos_bin, workdir=tmp_path / "pdp", policies=policies)
    server = start_server(make_settings(pdp, pdp_timeout_seconds=2.0), token)
    try:
        async with server.client("alice") as client:
            ticket = (await client.call_tool("create_ticket", {"title": "Reload probe"})).data
            calls: dict[str, Callable[[], Any]] = {
                "tools": lambda: client.list_tools(),
                "get": lambda: client.call_tool("get_ticket", {"ticket_id": ticket.id}),
                "list": lambda: client.call_tool("list_tickets", {"limit": 100}),
                "read": lambda: client.read_resource(f"ticket://{ticket.id}"),
            }

            def outcome(name: str, result: Any) -> Any:
                if name == "tools":
                    return sorted(t.name for t in result)
                if name == "read":
                    return result[0].text[:20]
                if name == "list":
                    return result.structured_content["count"]
                return result.structured_content["id"]

            expected = {name: outcome(name, await call()) for name, call in calls.items()}
            seen: list[tuple[str, Any]] = []
            stop = asyncio.Event()

            async def keep_calling() -> None:
                while not stop.is_set():
                    for name, call in calls.items():
                        try:
                            seen.append((name, outcome(name, await call())))
                        except Exception as exc:  # noqa: BLE001 - every failure is recorded
                            seen.append((name, f"{type(exc).__name__}: {exc}"[:200]))

            # Beside the MCP calls, record decisions straight from a PDP client of the same
            # kind, fast enough to land in the milliseconds in which a reload matches nothing.
            direct = CountingPDP(
                pdp.grpc_address, timeout_seconds=2.0, max_resources_per_request=50
            )
            await direct.start()
            registered = await server.mcp.get_tool("create_ticket")
            assert registered is not None
            probe = [
                (components.tool_resource(registered), ("call",)),
                (TICKET.resource(None, ticket.id), ("view",)),
            ]
            unmatched: list[str] = []

            async def keep_deciding() -> None:
                while not stop.is_set():
                    result = await direct.check(ALICE, probe, request_id="reload-probe")
                    unmatched.extend(
                        d.resource.kind
                        for d in result.decisions
                        for a in d.actions.values()
                        if a.policy == NO_MATCH
                    )

            callers = [asyncio.create_task(keep_calling()) for _ in range(3)]
            callers += [asyncio.create_task(keep_deciding()) for _ in range(4)]
            edited = [
                policies / "derived_roles" / "tickets.yaml",
                policies / "derived_roles" / "mcp_components.yaml",
                policies / "ticket.yaml",
                policies / "mcp_tool.yaml",
            ]
            try:
                for round_ in range(2):
                    for path in edited:
                        path.write_text(path.read_text() + f"\n# reload {round_}\n")
                        await asyncio.sleep(2.5)  # the PDP reloads ~2 s after an edit
            finally:
                stop.set()
                await asyncio.gather(*callers)
                await direct.close()
        print(f"{direct.retries} of {direct.requests} PDP requests were asked again")
        assert unmatched == [], f"{len(unmatched)} decisions matched no policy: {unmatched[:5]}"
        wrong = [(name, got) for name, got in seen if got != expected[name]]
        assert len(seen) > 40, "calls ran throughout the reloads"
        assert wrong == [], f"{len(wrong)} of {len(seen)} calls answered differently: {wrong[:5]}"
    finally:
        server.stop()
        pdp.process.stop()
