"""One trace from the caller through the server into the PDP, the PDP's decision log and the
server's decision records pointing at each other, and a collector that is down costing calls
nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastmcp.exceptions import ToolError
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ops.devstack import PDP, free_port, pdp_tracing_env, start_pdp, wait_until
from server.settings import Settings
from tests.support import (
    SERVER,
    OtlpReceiver,
    ReceivedSpan,
    RunningServer,
    caller_span,
    children,
    has,
    one,
    pdp_decisions,
    spans_of_trace,
    start_server,
)

PDP_CHECK = "cerbos.svc.v1.CerbosService/CheckResources"


@pytest.fixture(scope="module")
def server(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[RunningServer]:
    """Every decision from the PDP itself (no decision cache): each has its own log entry."""
    running = start_server(make_settings(pdp, authz_cache_seconds=0), token)
    yield running
    running.stop()


def tree_lines(spans: list[ReceivedSpan], parent: int, depth: int = 0) -> list[str]:
    lines = []
    for span in sorted((s for s in spans if s.parent_id == parent), key=lambda s: s.span_id):
        lines.append(f"{'  ' * depth}{span.name}  [{span.service}]")
        lines += tree_lines(spans, span.span_id, depth + 1)
    return lines


async def test_one_trace_runs_from_the_caller_through_the_server_into_the_pdp(
    pdp: PDP,
    cerbos_bin: Path,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    exporting = {
        "otel_exporter": "otlp",
        "otel_protocol": "http/protobuf",
        "otel_endpoint": "",  # set below, once the collector has a port
    }
    with OtlpReceiver() as collector:
        exporting["otel_endpoint"] = collector.base_url
        # The PDP gets the same environment `make dev` gives it.
        env = pdp_tracing_env(make_settings(pdp, **exporting))
        assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == collector.traces_url
        own_pdp = start_pdp(
            cerbos_bin,
            workdir=tmp_path / "pdp",
            env={**env, "OTEL_BSP_SCHEDULE_DELAY": "100"},  # export within 0.1 s, not 5 s
        )
        server = start_server(make_settings(own_pdp, **exporting), token)
        try:
            with caller_span() as trace_id:
                async with server.client("alice") as client:
                    await client.call_tool("get_ticket", {"ticket_id": 1})
        finally:
            server.stop()  # the lifespan's close flushes the server's spans
            own_pdp.process.stop()  # and the PDP flushes its own on the way out

        def complete() -> bool:
            names = {(s.service, s.name) for s in collector.of_trace(trace_id)}
            return {
                ("mcp-server-template", "tools/call get_ticket"),
                ("cerbos", PDP_CHECK),
            } <= names

        wait_until(complete, timeout=15, what="server and PDP spans at the collector")
        spans = collector.of_trace(trace_id)
        print("\n" + "\n".join(tree_lines(spans, parent=0)))

    by_id = {s.span_id: s for s in spans}
    pdp_checks = [s for s in spans if s.service == "cerbos" and s.name == PDP_CHECK]
    assert len(pdp_checks) >= 2  # the tool gate and the record check inside the tool
    for pdp_check in pdp_checks:
        # caller -> MCP server span (decisions as its events) -> PDP -> engine: one chain
        assert any(s.name == "engine.Check" and s.parent_id == pdp_check.span_id for s in spans)
        served = by_id[pdp_check.parent_id]
        assert served.service == "mcp-server-template"
        assert served.name in ("tools/call get_ticket", "tools/list")
        while served.parent_id in by_id:
            served = by_id[served.parent_id]
        assert served.name == "caller"


async def test_the_pdp_decision_log_and_the_decision_span_point_at_each_other(
    server: RunningServer, pdp: PDP, spans: InMemorySpanExporter
) -> None:
    async with pdp_decisions(server, pdp.audit_log) as entries:
        with caller_span() as trace_id:
            async with server.client("bob") as client:
                await client.call_tool("get_ticket", {"ticket_id": 7})
        tree = await spans_of_trace(spans, trace_id, has("tools/call get_ticket"))

    server_span = one(tree, "tools/call get_ticket", SERVER)
    decisions = [dict(e.attributes or {}) for e in server_span.events if e.name == "authz.decision"]
    assert len(decisions) == 2  # the tool gate, then the record check inside the tool
    assert not children(tree, server_span)  # decisions are events, not spans
    by_call_id = {e["callId"]: e for e in entries}
    for decision in decisions:
        # From the decision to the log entry...
        entry = by_call_id[decision["cerbos.call_id"]]
        (logged,) = entry["checkResources"]["inputs"]
        assert logged["resource"]["id"] == decision["authz.resource.id"]
        # ...and from the entry back: the request id it carries is the request's, and its
        # traceparent names the request's span.
        request_id = server_span.attributes["authz.request_id"]
        assert entry["metadata"]["x-request-id"]["values"] == [request_id]
        (traceparent,) = entry["metadata"]["traceparent"]["values"]
        assert traceparent.split("-")[1] == f"{trace_id:032x}"
        assert traceparent.split("-")[2] == f"{server_span.context.span_id:016x}"
        assert logged["principal"]["id"] == "bob"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_a_collector_that_is_down_costs_calls_nothing(
    protocol: str,
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    export_timeout = 2.0
    settings = make_settings(
        pdp,
        otel_exporter="otlp",
        otel_protocol=protocol,
        otel_endpoint=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        otel_export_timeout_seconds=export_timeout,
        otel_max_queue_size=32,  # far fewer than the spans below: the queue must stay bounded
    )
    server = start_server(settings, token)
    durations = []
    try:
        async with server.client("alice") as client:
            for i in range(20):
                started = time.monotonic()
                await client.call_tool("create_ticket", {"title": f"Collector down {i}"})
                durations.append(time.monotonic() - started)
            with pytest.raises(ToolError, match="Unknown tool"):
                await client.call_tool("delete_ticket", {"ticket_id": 1})
    finally:
        stopping = time.monotonic()
        server.stop()
        stopped_after = time.monotonic() - stopping
    # No call waited for an export (each would take seconds), and shutdown gave up in time.
    assert max(durations) < export_timeout / 2, durations
    assert stopped_after < export_timeout + 3
    print(f"median call {sorted(durations)[10] * 1000:.1f} ms, stop {stopped_after:.1f} s")
