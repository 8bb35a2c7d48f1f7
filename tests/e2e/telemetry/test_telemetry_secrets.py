"""No bearer token, token claim, tool argument or sensitive header value reaches a span or a log
line: spans carry names, ids and decisions, never request data."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ops.devstack import PDP
from server.settings import Settings
from tests.support import (
    RunningServer,
    caller_span,
    has,
    is_server_side,
    spans_of_trace,
    start_server,
)


def encodings(secret: str) -> set[str]:
    raw = secret.encode()
    return {
        secret,
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.hex(),
    }


def span_texts(span: ReadableSpan) -> Iterator[str]:
    yield span.name
    yield span.status.description or ""
    for key, value in {**(span.attributes or {}), **span.resource.attributes}.items():
        yield f"{key}={value}"
    for event in span.events:
        yield event.name
        for key, value in (event.attributes or {}).items():
            yield f"{key}={value}"


@pytest.fixture
def server_capturing_every_header(
    monkeypatch: pytest.MonkeyPatch,
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> Iterator[RunningServer]:
    """An operator turned on capturing *all* request headers on HTTP spans."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
    # Statement spans on: SQL text is one more place where request data could leak.
    running = start_server(make_settings(pdp, otel_statement_spans=True), token)
    yield running
    running.stop()


async def test_no_token_argument_or_secret_header_reaches_spans_or_logs(
    server_capturing_every_header: RunningServer,
    token: Callable[..., str],
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = server_capturing_every_header
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="server")
    canary = f"canary-{uuid.uuid4().hex}"
    bearer = token("alice", canary_claim=canary)
    secrets = {bearer, bearer.rsplit(".", 1)[1], *encodings(canary)}
    header_secrets = {
        "Cookie": f"session={canary}",
        "X-Api-Key": canary,
        "X-Upstream-Token": canary,
    }

    with caller_span() as trace_id:
        headers = {"traceparent": "00-" + f"{trace_id:032x}" + "-00f067aa0ba902b7-01"}
        url_with_query = f"{server.url}?access_token={canary}"
        async with server.client(token=bearer, headers={**headers, **header_secrets}) as client:
            await client.call_tool("create_ticket", {"title": canary, "description": canary})
            results = [
                # invalid arguments: the validation error quotes them
                await client.call_tool("list_tickets", {"limit": canary}, raise_on_error=False),
                await client.call_tool(
                    "update_ticket", {"ticket_id": 1, "priority": canary}, raise_on_error=False
                ),
                # denied (destructive, no MFA) and unknown tools, with arguments
                await client.call_tool(
                    "delete_ticket", {"ticket_id": 1, "reason": canary}, raise_on_error=False
                ),
                await client.call_tool("no_such_tool", {"x": canary}, raise_on_error=False),
            ]
        assert all(r.is_error for r in results)
        # A refused token and a query string, over plain HTTP.
        async with httpx2.AsyncClient() as http:
            for auth in (f"Bearer {canary}", f"Bearer {bearer}x"):
                response = await http.post(
                    url_with_query,
                    headers={**headers, "Authorization": auth, "Content-Type": "application/json"},
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                )
                assert response.status_code == 401

    exported = await spans_of_trace(spans, trace_id, has("tools/call no_such_tool"))
    exported = [s for s in exported if is_server_side(s)]
    # The scan is only meaningful if the spans where data could leak are there.
    names = {s.name for s in exported}
    assert {"POST /mcp", "tools/call create_ticket", "INSERT ticket"} <= names
    assert any(e.name == "authz.decision" for s in exported for e in s.events)
    assert any(e.name == "exception" for s in exported for e in s.events)
    assert any("http.request.header.cookie" in (s.attributes or {}) for s in exported)

    leaks = [
        (span.name, text)
        for span in exported
        for text in span_texts(span)
        if any(secret in text for secret in secrets)
    ]
    assert leaks == []
    # The test's own HTTP client logs the URLs it requests; it is not the server.
    logged: list[Any] = [
        r.getMessage() + (r.exc_text or "")
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore"))
    ]
    assert logged  # the server did log (warnings for the invalid arguments, at least)
    assert [line for line in logged if any(secret in line for secret in secrets)] == []
