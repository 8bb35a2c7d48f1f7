"""Every authorization decision is recorded where an operator finds it: who, what, the effect,
the policy, the PDP call id, the request id, the latency, and for a refusal the reason.

By default each decision is an ``authz.decision`` event on the request's span (FastMCP's server
span); ``MCP_OTEL_DECISION_SPANS=true`` makes each PDP request a span of its own. Spans are
captured in memory (the ``spans`` fixture); the servers and the PDP are real.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cerbos.svc.v1 import svc_pb2_grpc
from fastmcp.exceptions import ToolError
from mcp import MCPError
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from ops.devstack import PDP, free_port
from server.authz.errors import AUTHORIZATION_UNAVAILABLE
from server.settings import Settings
from server.telemetry import setup as telemetry
from tests.support import (
    SERVER,
    GrpcServicerThread,
    RunningServer,
    caller_span,
    children,
    has,
    insert_ticket,
    one,
    spans_of_trace,
    start_server,
)

CALL_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")  # the PDP's call ids are ULIDs
TOOL_POLICY = "resource.mcp_tool.vdefault"


@pytest.fixture(scope="module")
def server(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[RunningServer]:
    """Every decision from the PDP itself (no decision cache), and a span per SQL statement."""
    running = start_server(
        make_settings(pdp, authz_cache_seconds=0, otel_statement_spans=True), token
    )
    yield running
    running.stop()


def decision_events(span: ReadableSpan, **attributes: Any) -> list[dict[str, Any]]:
    """The span's ``authz.decision`` events whose attributes include ``attributes``."""
    events = [dict(e.attributes or {}) for e in span.events if e.name == "authz.decision"]
    return [e for e in events if all(e.get(k) == v for k, v in attributes.items())]


async def test_allowed_call_records_who_what_effect_policy_and_ids(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    with caller_span() as trace_id:
        async with server.client("alice") as client:
            await client.call_tool("create_ticket", {"title": "Printer on fire"})
    tree = await spans_of_trace(spans, trace_id, has("tools/call create_ticket"))

    server_span = one(tree, "tools/call create_ticket", SERVER)
    attrs = dict(server_span.attributes or {})
    assert attrs["authz.principal.id"] == "alice"
    assert attrs["authz.principal.roles"] == ("support_agent",)
    assert re.fullmatch(r"[0-9a-f]{32}", attrs["authz.request_id"])
    assert attrs["authz.effect"] == "ALLOW"
    (gate,) = decision_events(server_span, **{"authz.action": "call"})
    assert CALL_ID.match(gate.pop("cerbos.call_id"))
    assert gate.pop("authz.pdp.latency_ms") > 0
    assert gate == {
        "authz.resource.kind": "mcp_tool",
        "authz.resource.id": "create_ticket",
        "authz.action": "call",
        "authz.effect": "ALLOW",
        "authz.policy": TOOL_POLICY,
    }
    # No span per decision: the PDP's spans continue from the server span.
    assert not [s for s in children(tree, server_span) if s.name.startswith("authz.")]
    # The tool's own record check went through the same code, under the same request.
    (record,) = decision_events(server_span, **{"authz.action": "create"})
    assert record["authz.resource.kind"] == "ticket"
    assert record["authz.effect"] == "ALLOW"
    assert CALL_ID.match(record["cerbos.call_id"])


async def test_denied_call_is_an_error_span_with_the_reason_and_names_the_tool(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    reached = len(server.reached.calls)
    with caller_span() as trace_id:
        async with server.client("alice") as client:
            with pytest.raises(ToolError, match="Unknown tool"):
                await client.call_tool("delete_ticket", {"ticket_id": 1})
    tree = await spans_of_trace(spans, trace_id, has("tools/call delete_ticket"))
    assert server.reached.calls[reached:] == []

    server_span = one(tree, "tools/call delete_ticket", SERVER)
    assert server_span.status.status_code == StatusCode.ERROR
    assert server_span.attributes["gen_ai.tool.name"] == "delete_ticket"
    assert server_span.attributes["authz.effect"] == "DENY"
    assert server_span.attributes["authz.denial_reason"] == "policy_denied"
    (event,) = decision_events(server_span)
    assert event["authz.effect"] == "DENY"
    assert event["authz.denial_reason"] == "policy_denied"
    assert event["authz.policy_reason"] == "mfa_required"  # the DENY rule's own output
    assert event["authz.resource.id"] == "delete_ticket"
    assert event["authz.policy"] == TOOL_POLICY
    assert CALL_ID.match(event["cerbos.call_id"])


async def test_unknown_tool_is_refused_with_its_own_reason(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    with caller_span() as trace_id:
        async with server.client("dave") as client:  # an admin: the policy alone would allow
            with pytest.raises(ToolError, match="Unknown tool"):
                await client.call_tool("no_such_tool", {})
    tree = await spans_of_trace(spans, trace_id, has("tools/call no_such_tool"))
    server_span = one(tree, "tools/call no_such_tool", SERVER)
    assert server_span.status.status_code == StatusCode.ERROR
    assert server_span.attributes["authz.denial_reason"] == "unknown_component"


async def test_a_list_records_the_effect_of_every_item(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    registered = {t.name for t in await server.mcp.list_tools(run_middleware=False)}
    with caller_span() as trace_id:
        async with server.client("mallory") as client:
            visible = {t.name for t in await client.list_tools()}
    tree = await spans_of_trace(spans, trace_id, has("tools/list"))

    server_span = one(tree, "tools/list", SERVER)
    # The whole list is one event: every tool named, allowed or denied, by one PDP call.
    (event,) = [dict(e.attributes or {}) for e in server_span.events]
    assert set(event["authz.allowed_ids"]) == visible
    assert set(event["authz.denied_ids"]) == registered - visible
    assert (event["authz.resource.kind"], event["authz.action"]) == ("mcp_tool", "list")
    assert event["authz.allowed_count"] == len(visible)
    assert event["authz.denied_count"] == len(registered) - len(visible)
    assert event["authz.policies"] == (TOOL_POLICY,)
    assert "authz.invalid_ids" not in event  # every declaration passed the policy schema
    assert CALL_ID.match(event["cerbos.call_id"])
    assert event["authz.pdp.latency_ms"] > 0
    assert server_span.attributes["authz.allowed_count"] == len(visible)
    assert server_span.attributes["authz.denied_count"] == len(registered) - len(visible)
    # Filtering a list is not a refusal.
    assert server_span.status.status_code == StatusCode.UNSET


async def test_a_cached_list_is_one_event_naming_the_pdp_call_it_came_from(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
    spans: InMemorySpanExporter,
) -> None:
    server = start_server(make_settings(pdp, authz_cache_seconds=10), token)
    try:
        with caller_span() as trace_id:
            async with server.client("erin") as client:
                first = {t.name for t in await client.list_tools()}
                second = {t.name for t in await client.list_tools()}
        tree = await spans_of_trace(
            spans,
            trace_id,
            lambda found: (
                len([s for s in found if s.name == "tools/list" and s.kind == SERVER]) == 2
            ),
        )
    finally:
        server.stop()
    assert first == second
    asked, reused = sorted(
        (s for s in tree if s.name == "tools/list" and s.kind == SERVER),
        key=lambda s: s.start_time or 0,
    )
    ((fresh,), (cached,)) = ([dict(e.attributes or {}) for e in s.events] for s in (asked, reused))
    assert "authz.cached" not in fresh
    assert cached["authz.cached"] is True
    assert cached["cerbos.call_id"] == fresh["cerbos.call_id"]
    assert cached["authz.cache.request_id"] == asked.attributes["authz.request_id"]
    assert set(cached["authz.allowed_ids"]) == set(fresh["authz.allowed_ids"]) == second


async def test_record_checks_and_query_plans_are_recorded_too(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    theirs = insert_ticket(server.db_path, team="tier2")
    with caller_span() as trace_id:
        async with server.client("alice") as client:
            await client.call_tool("list_tickets", {"limit": 3})
            denied = await client.call_tool(
                "get_ticket", {"ticket_id": theirs}, raise_on_error=False
            )
    assert denied.is_error
    tree = await spans_of_trace(spans, trace_id, has("tools/call get_ticket"))

    listing = one(tree, "tools/call list_tickets", SERVER)
    (plan,) = [dict(e.attributes or {}) for e in listing.events if e.name == "authz.plan"]
    assert plan["authz.resource.kind"] == "ticket"
    assert plan["authz.action"] == "view"
    assert plan["authz.plan.filter"] == "CONDITIONAL"
    assert plan["authz.effect"] == "CONDITIONAL"
    assert CALL_ID.match(plan["cerbos.call_id"])
    assert listing.attributes["authz.principal.id"] == "alice"

    getting = one(tree, "tools/call get_ticket", SERVER)
    (record,) = decision_events(getting, **{"authz.resource.kind": "ticket"})
    assert record["authz.resource.id"] == str(theirs)
    assert (record["authz.action"], record["authz.effect"]) == ("view", "DENY")
    assert record["authz.denial_reason"] == "policy_denied"
    assert getting.status.status_code == StatusCode.ERROR


async def test_decision_spans_when_configured(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
    spans: InMemorySpanExporter,
) -> None:
    server = start_server(
        make_settings(pdp, authz_cache_seconds=0, otel_decision_spans=True), token
    )
    try:
        with caller_span() as trace_id:
            async with server.client("alice") as client:
                await client.call_tool("create_ticket", {"title": "Printer on fire"})
        tree = await spans_of_trace(spans, trace_id, has("tools/call create_ticket"))
    finally:
        server.stop()

    server_span = one(tree, "tools/call create_ticket", SERVER)
    check = one(children(tree, server_span), "authz.check", **{"authz.action": "call"})
    attrs = dict(check.attributes or {})
    assert attrs["authz.principal.id"] == "alice"
    assert attrs["authz.principal.roles"] == ("support_agent",)
    assert attrs["authz.resource.kind"] == "mcp_tool"
    assert attrs["authz.resource.id"] == "create_ticket"
    assert attrs["authz.effect"] == "ALLOW"
    assert attrs["authz.policy"] == TOOL_POLICY
    assert CALL_ID.match(attrs["cerbos.call_id"])
    assert attrs["authz.request_id"] == server_span.attributes["authz.request_id"]
    assert attrs["authz.pdp.latency_ms"] > 0
    assert check.status.status_code == StatusCode.UNSET
    assert len(decision_events(check)) == 1
    # The decision span is the RPC: no separate client span (the PDP's spans continue from it).
    assert children(tree, check) == []
    record = one(children(tree, server_span), "authz.check", **{"authz.action": "create"})
    assert record.attributes["authz.resource.kind"] == "ticket"
    assert record.attributes["authz.request_id"] == attrs["authz.request_id"]


async def test_a_cached_decision_names_the_pdp_call_and_request_it_came_from(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
    spans: InMemorySpanExporter,
) -> None:
    # A long TTL, so that the second call surely finds the first call's decision.
    server = start_server(make_settings(pdp, authz_cache_seconds=10), token)
    try:
        with caller_span() as trace_id:
            async with server.client("alice") as client:
                await client.call_tool("get_ticket", {"ticket_id": 1})
                await client.call_tool("get_ticket", {"ticket_id": 2})
        tree = await spans_of_trace(
            spans,
            trace_id,
            lambda found: (
                len([s for s in found if s.name == "tools/call get_ticket" and s.kind == SERVER])
                == 2
            ),
        )
    finally:
        server.stop()
    first, second = sorted(
        (s for s in tree if s.name == "tools/call get_ticket" and s.kind == SERVER),
        key=lambda s: s.start_time or 0,
    )
    (asked,) = decision_events(first, **{"authz.resource.kind": "mcp_tool"})
    (reused,) = decision_events(second, **{"authz.resource.kind": "mcp_tool"})
    assert "authz.cached" not in asked
    assert reused["authz.cached"] is True
    assert reused["cerbos.call_id"] == asked["cerbos.call_id"]
    assert reused["authz.cache.request_id"] == first.attributes["authz.request_id"]
    assert reused["authz.cache.age_ms"] >= 0
    assert (reused["authz.effect"], reused["authz.policy"]) == ("ALLOW", TOOL_POLICY)
    # The record decision is never reused: each call asked the PDP about its own ticket.
    records = [decision_events(s, **{"authz.resource.kind": "ticket"}) for s in (first, second)]
    assert [len(r) for r in records] == [1, 1]
    assert all("authz.cached" not in r[0] for r in records)
    assert records[0][0]["cerbos.call_id"] != records[1][0]["cerbos.call_id"]


class HangingPDP(svc_pb2_grpc.CerbosServiceServicer):
    """Takes every request and never answers."""

    async def CheckResources(self, request: Any, context: Any) -> Any:
        await asyncio.Event().wait()


async def test_store_queries_are_spans_with_the_statement_but_no_values(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    with caller_span() as trace_id:
        async with server.client("alice") as client:
            await client.call_tool("list_tickets", {"limit": 3})
    tree = await spans_of_trace(spans, trace_id, has("tools/call list_tickets"))

    server_span = one(tree, "tools/call list_tickets", SERVER)
    query = one(children(tree, server_span), "SELECT ticket", trace.SpanKind.CLIENT)
    text = query.attributes["db.query.text"]
    # The WHERE clause the query plan became, with alice's values (team tier1, her id) bound
    # as parameters rather than written into the statement.
    assert "WHERE" in text and "?" in text
    assert "tier1" not in text and "alice" not in text
    assert query.attributes["db.collection.name"] == "ticket"


@pytest.fixture
def pdp_outage(
    request: pytest.FixtureRequest,
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> Iterator[RunningServer]:
    """A server whose PDP address is closed ("down") or never answers ("hung")."""
    with GrpcServicerThread(HangingPDP()) as hanging:
        port = hanging.port if request.param == "hung" else free_port()
        running = start_server(make_settings(pdp, pdp_address=f"127.0.0.1:{port}"), token)
        yield running
        running.stop()


@pytest.mark.parametrize(
    ("pdp_outage", "reason"),
    [("down", "pdp_unavailable"), ("hung", "pdp_timeout")],
    indirect=["pdp_outage"],
)
async def test_pdp_outage_is_a_failed_decision_with_the_reason(
    pdp_outage: RunningServer, reason: str, spans: InMemorySpanExporter
) -> None:
    with caller_span() as trace_id:
        async with pdp_outage.client("alice") as client:
            with pytest.raises(MCPError) as failure:
                await client.call_tool("create_ticket", {"title": "During the outage"})
    assert failure.value.error.code == AUTHORIZATION_UNAVAILABLE
    assert pdp_outage.reached.calls == []
    # The client's first request (its tools/list) failed the same way; the call is the last one.
    tree = await spans_of_trace(spans, trace_id, has("tools/call create_ticket"))

    server_span = one(tree, "tools/call create_ticket", SERVER)
    assert server_span.status.status_code == StatusCode.ERROR
    assert server_span.attributes["authz.denial_reason"] == reason
    assert server_span.attributes["authz.principal.id"] == "alice"
    (event,) = decision_events(server_span)
    assert event["authz.denial_reason"] == reason
    assert event["authz.effect"] == "DENY"
    assert (event["authz.resource.id"], event["authz.action"]) == ("create_ticket", "call")
    assert "cerbos.call_id" not in event  # no PDP answered


async def test_an_http_traceparent_header_continues_the_callers_trace(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    trace_id, parent_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    header = {"traceparent": f"00-{trace_id:032x}-{parent_id:016x}-01"}
    # No caller span: the client's own context (in _meta) is a different, new trace.
    async with server.client("alice", headers=header) as client:
        await client.call_tool("get_ticket", {"ticket_id": 1})
    tree = await spans_of_trace(spans, trace_id, has("tools/call get_ticket"))

    # Each HTTP request of the session continues the caller's span...
    http = [s for s in tree if s.name == "POST /mcp"]
    assert http and all(s.parent is not None and s.parent.span_id == parent_id for s in http)
    # ...and the MCP server span runs inside one of them, not in the client's _meta trace.
    server_span = one(tree, "tools/call get_ticket", SERVER)
    assert server_span.parent is not None
    assert server_span.parent.span_id in {s.context.span_id for s in http if s.context}
    assert decision_events(server_span, **{"authz.resource.kind": "mcp_tool"})


async def test_meta_traceparent_continues_the_callers_trace(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    with caller_span() as trace_id:
        async with server.client("alice") as client:
            await client.call_tool("get_ticket", {"ticket_id": 1})
    tree = await spans_of_trace(spans, trace_id, has("tools/call get_ticket"))

    # No HTTP header was sent, so there is no HTTP span: the server span's parent is the
    # client's request span whose context travelled in _meta.
    assert not any(s.name.startswith("POST") for s in tree)
    sent = one(tree, "MCP send tools/call get_ticket", trace.SpanKind.CLIENT)
    server_span = one(tree, "tools/call get_ticket", SERVER)
    assert server_span.parent is not None and server_span.parent.span_id == sent.context.span_id


async def test_an_unsampled_caller_cannot_switch_off_the_record_of_its_decisions(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    header = {"traceparent": f"00-{trace_id:032x}-00f067aa0ba902b7-00"}  # flags 00: not sampled
    async with server.client("alice", headers=header) as client:
        with pytest.raises(ToolError):
            await client.call_tool("delete_ticket", {"ticket_id": 1})
    tree = await spans_of_trace(spans, trace_id, has("tools/call delete_ticket"))
    server_span = one(tree, "tools/call delete_ticket", SERVER)
    assert decision_events(server_span, **{"authz.effect": "DENY"})


async def test_spans_name_the_service_version_and_environment(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    with caller_span() as trace_id:
        async with server.client("alice") as client:
            await client.list_prompts()
    tree = await spans_of_trace(spans, trace_id, has("prompts/list"))
    resource = one(tree, "prompts/list", SERVER).resource.attributes
    assert resource["service.name"] == "mcp-server-template"
    assert resource["service.version"] == telemetry.package_version()
    assert resource["deployment.environment.name"] == "development"


class BrokenProcessor(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("broken on_start")

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("broken on_end")


async def test_a_broken_span_processor_changes_no_decision(
    server: RunningServer, spans: InMemorySpanExporter
) -> None:
    broken = BrokenProcessor()
    telemetry.attach(broken)
    try:
        async with server.client("alice") as client:
            assert (await client.call_tool("get_ticket", {"ticket_id": 1})).structured_content
            with pytest.raises(ToolError, match="Unknown tool"):
                await client.call_tool("delete_ticket", {"ticket_id": 1})
    finally:
        telemetry.detach(broken)
    # The other processors still got every span, decisions and all.
    assert any(
        decision_events(s, **{"authz.resource.id": "delete_ticket", "authz.effect": "DENY"})
        for s in spans.get_finished_spans()
    )


def test_otlp_export_needs_a_collector_url() -> None:
    with pytest.raises(ValueError, match="MCP_OTEL_ENDPOINT"):
        Settings(transport="stdio", otel_exporter="otlp")
    with pytest.raises(ValueError, match="MCP_OTEL_ENDPOINT"):
        Settings(transport="stdio", otel_exporter="otlp", otel_endpoint="collector:4317")
    http = Settings(
        transport="stdio",
        otel_exporter="otlp",
        otel_protocol="http/protobuf",
        otel_endpoint="http://collector:4318/",
    )
    assert http.otel_traces_endpoint == "http://collector:4318/v1/traces"
    grpc = Settings(transport="stdio", otel_exporter="otlp", otel_endpoint="http://collector:4317")
    assert grpc.otel_traces_endpoint == "http://collector:4317"


async def test_a_throttled_request_is_a_refusal_naming_who_and_why(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
    spans: InMemorySpanExporter,
) -> None:
    """Throttling happens at the HTTP edge, before the body (and its ``_meta``) is read: the
    refusal is recorded on the HTTP span, which a ``traceparent`` header continues."""
    server = start_server(make_settings(pdp, rate_limit_per_second=0.01, rate_limit_burst=3), token)
    try:
        with caller_span() as trace_id:
            headers: dict[str, str] = {}
            propagate.inject(headers)
            async with server.client("mallory", headers=headers) as client:

                async def flood() -> None:  # the burst is three requests; this needs more
                    for _ in range(3):
                        await client.call_tool("create_ticket", {"title": "Flood"})

                with pytest.raises(MCPError):
                    await flood()
    finally:
        server.stop()

    def refusal(spans: list[ReadableSpan]) -> list[ReadableSpan]:
        return [
            s
            for s in spans
            if s.kind == SERVER
            and (s.attributes or {}).get("authz.denial_reason") == "rate_limited"
        ]

    tree = await spans_of_trace(spans, trace_id, lambda spans: bool(refusal(spans)))
    refused = refusal(tree)[0]
    assert refused.status.status_code == StatusCode.ERROR
    assert refused.attributes["authz.principal.id"] == "mallory"
    assert not children(tree, refused)  # refused before any PDP work
