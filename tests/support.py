"""Helpers shared by the tests: a real server on a loopback port, tokens, DB snapshots, probes."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import hvac
from cerbos.svc.v1 import svc_pb2_grpc
from fastmcp import Client, FastMCP
from fastmcp.client.transports import StreamableHttpTransport
from fastmcp.server.middleware import Middleware
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ops.devstack import UvicornThread, free_port, wait_until
from server.app import create_http_app, create_server
from server.runtime import Runtime, build_runtime
from server.settings import Settings
from tools.accounts.pii import KEY as PII_KEY
from tools.accounts.pii import mask_email, mask_phone

ROOT = Path(__file__).resolve().parent.parent
POLICY_TESTS = ROOT / "policies" / "tests"

# --- canaries: unique secret values seeded in Vault, looked for everywhere after the suite --------

CANARIES: list[str] = []
SPANS = InMemorySpanExporter()
# Everything the servers answered over HTTP (bodies of every response), across the session.
HTTP_TRANSCRIPT: list[bytes] = []


def new_canary(kind: str) -> str:
    value = f"canary-{kind}-{secrets.token_hex(12)}"
    CANARIES.append(value)
    return value


def seed_canaries(admin: hvac.Client) -> None:
    """Replace the bootstrap's random secrets with canaries, plus a canary key nobody uses."""
    admin.secrets.kv.v2.create_or_update_secret(
        path="tools/tickets/notifications",
        secret={"signing_key": new_canary("signing-key"), "unused": new_canary("unused")},
        mount_point="secret",
    )
    admin.secrets.kv.v2.create_or_update_secret(
        path="mcp/server",
        secret={
            "database_password": new_canary("database-password"),
            "request_state_key": new_canary("request-state-key"),
        },
        mount_point="secret",
    )


def encodings(value: str) -> set[str]:
    """The forms a leaked value could take: plain, URL-encoded, hex, and base64 (standard and
    URL-safe, at each of the three alignments it can have inside a longer base64 text)."""
    raw = value.encode()
    forms = {value, urllib.parse.quote(value), urllib.parse.quote_plus(value), raw.hex()}
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * offset + raw).decode()
            # Drop the characters that depend on the padding bytes or on what follows.
            start = (offset * 4 + 2) // 3 if offset else 0
            forms.add(encoded[start : len(encoded) - 4].rstrip("="))
    return {f for f in forms if len(f) >= 12}


def find_canaries(texts: Iterable[tuple[str, str]], canaries: Iterable[str]) -> list[str]:
    """``where: which canary (form)`` for every canary form found in the (where, text) pairs."""
    patterns = {form: canary for canary in canaries for form in encodings(canary)}
    found = []
    for where, text in texts:
        for form, canary in patterns.items():
            if form in text:
                found.append(f"{where}: {canary[:16]}... as {form[:12]}...")
    return found


class RecordHTTP:
    """ASGI wrapper: keeps every response body the server sends (for the canary scan)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def recording_send(message: Any) -> None:
            if message.get("type") == "http.response.body" and message.get("body"):
                HTTP_TRANSCRIPT.append(bytes(message["body"]))
            await send(message)

        await self.app(scope, receive, recording_send)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class ReachedTool(Middleware):
    """Counts tools/call requests that got past authorization, i.e. reached the tool."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def on_call_tool(self, context: Any, call_next: Any) -> Any:
        self.calls.append(context.message.name)
        return await call_next(context)


@dataclass
class RunningServer:
    settings: Settings
    mcp: FastMCP[Any]
    http: UvicornThread
    db_path: Path
    reached: ReachedTool
    token: Callable[..., str]
    runtime: Runtime

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}{self.settings.path}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    def client(
        self,
        who: str | None = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **client_options: Any,
    ) -> Client[Any]:
        """An MCP client over real HTTP as ``who``; options go to fastmcp.Client (mode, ...)."""
        bearer = token if token is not None else (self.token(who) if who else None)
        transport = StreamableHttpTransport(self.url, auth=bearer, headers=headers)
        return Client(transport, **client_options)

    def stop(self) -> None:
        self.http.stop()


def start_server(
    settings: Settings,
    token: Callable[..., str],
    prepare: Callable[[FastMCP[Any]], None] | None = None,
) -> RunningServer:
    runtime = build_runtime(settings)
    mcp = create_server(settings, runtime=runtime)
    if prepare is not None:
        prepare(mcp)
    reached = ReachedTool()
    mcp.add_middleware(reached)  # added last = innermost: runs only after authorization
    http = UvicornThread(RecordHTTP(create_http_app(mcp, settings)), port=settings.port).start()
    # The SQLite file the DB helpers inspect (servers on another database have none).
    db_path = (
        Path(settings.database_url.split("///", 1)[1]) if "///" in settings.database_url else Path()
    )
    return RunningServer(settings, mcp, http, db_path, reached, token, runtime)


# --- database ----------------------------------------------------------------------------------


def db_snapshot(db_path: Path) -> str:
    """A checksum of every row of every table: equal snapshots mean nothing changed."""
    digest = hashlib.sha256()
    with sqlite3.connect(db_path) as conn:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        for table in tables:
            digest.update(table.encode())
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1"):  # noqa: S608 - names from sqlite_master
                digest.update(repr(row).encode())
    return digest.hexdigest()


def insert_ticket(
    db_path: Path,
    *,
    team: str = "tier1",
    status: str = "open",
    assignee: str = "",
    category: str = "technical",
    created_by: str = "fixture",
) -> int:
    with sqlite3.connect(db_path) as conn:
        cur = conn.execute(
            "INSERT INTO ticket (title, description, status, priority, team, category, department,"
            " assignee, created_by, resolution, created_at, updated_at, version)"
            " VALUES ('Fixture ticket', '', ?, 'normal', ?, ?, 'support', ?, ?, '',"
            " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1)",
            (status, team, category, assignee, created_by),
        )
        return int(cur.lastrowid or 0)


FIXTURE_EMAIL = "x@fixture.example"
FIXTURE_PHONE = "+1 555 0000"
# The fixture contacts encrypted with the session Vault's "accounts" key (set by conftest).
FIXTURE_CIPHERTEXT: dict[str, str] = {}


def encrypt_fixture_contacts(admin: hvac.Client) -> None:
    for text in (FIXTURE_EMAIL, FIXTURE_PHONE):
        FIXTURE_CIPHERTEXT[text] = admin.secrets.transit.encrypt_data(
            name=PII_KEY, plaintext=b64(text)
        )["data"]["ciphertext"]


def insert_account(
    db_path: Path, *, balance_cents: int = 100_000, segment: str = "smb", status: str = "active"
) -> int:
    """An account with contacts x@fixture.example / +1 555 0000, stored as the tools store them."""
    contacts = (
        FIXTURE_CIPHERTEXT[FIXTURE_EMAIL],
        FIXTURE_CIPHERTEXT[FIXTURE_PHONE],
        mask_email(FIXTURE_EMAIL),
        mask_phone(FIXTURE_PHONE),
    )
    with sqlite3.connect(db_path) as conn:
        cur = conn.execute(
            "INSERT INTO account (name, plan, status, region, segment, department, email, phone,"
            " email_masked, phone_masked, balance_cents, created_at, updated_at, version)"
            " VALUES ('Fixture Ltd', 'pro', ?, 'eu', ?, 'finance', ?, ?, ?, ?, ?,"
            " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1)",
            (status, segment, *contacts, balance_cents),
        )
        return int(cur.lastrowid or 0)


def arguments_for(example: dict[str, Any], server: RunningServer, who: str) -> dict[str, Any]:
    """A capability's example arguments, aimed at fresh records the caller's record-level rules
    allow (so calls never depend on each other): a ticket in their queue, an active account,
    their own queue for a new ticket. Tests about the tool gate use these; the examples as
    declared run as they are for an admin."""
    arguments = dict(example)
    team = "tier2" if who == "bob" else "tier1"
    if "ticket_id" in arguments:
        category = "billing" if who == "carol" else "technical"
        arguments["ticket_id"] = insert_ticket(server.db_path, team=team, category=category)
    elif "team" in arguments:
        arguments["team"] = team
    if "account_id" in arguments:
        arguments["account_id"] = insert_account(server.db_path)
    return arguments


# --- PDP audit log -------------------------------------------------------------------------------


def audit_entries(audit_log: Path) -> list[dict[str, Any]]:
    if not audit_log.exists():
        return []
    entries = []
    for line in audit_log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("log.kind") == "decision":
            entries.append(entry)
    return entries


def entry_inputs(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The inputs of a decision-log entry: a CheckResources' resources, or a PlanResources'."""
    if "checkResources" in entry:
        return list(entry["checkResources"]["inputs"])
    return [entry["planResources"]["input"]]


def entry_principals(entry: dict[str, Any]) -> set[str]:
    return {i["principal"]["id"] for i in entry_inputs(entry)}


SENTINEL = "log-sentinel"


async def decisions_since(
    server: RunningServer, audit_log: Path, since: int
) -> list[dict[str, Any]]:
    """PDP decision-log entries after the first ``since`` ones, the sentinel's left out.

    The PDP writes its log asynchronously, so "no entry yet" proves nothing. A sentinel request,
    sent straight to the PDP (never answered from the server's decision cache), reaches it now;
    once its entry is in the log, everything before it is too.
    """
    from server.authz.decisions import ResourceRef
    from server.authz.pdp import PolicyDecisionPoint
    from server.edge.principal import Principal

    pdp = PolicyDecisionPoint(
        server.settings.pdp_address, timeout_seconds=5, max_resources_per_request=1
    )
    await pdp.start()
    try:
        await pdp.check(
            Principal(id=SENTINEL, roles=("auditor",), department="compliance"),
            [(ResourceRef("mcp_tool", "log_sentinel", {}), ("list",))],
            request_id=f"sentinel-{secrets.token_hex(8)}",
        )
    finally:
        await pdp.close()

    def sentinel_logged() -> bool:
        return any(SENTINEL in entry_principals(e) for e in audit_entries(audit_log)[since:])

    wait_until(sentinel_logged, timeout=10, what="sentinel decision in the PDP log")
    return [e for e in audit_entries(audit_log)[since:] if SENTINEL not in entry_principals(e)]


@asynccontextmanager
async def pdp_decisions(
    server: RunningServer, audit_log: Path
) -> AsyncIterator[list[dict[str, Any]]]:
    """Collect the PDP decision-log entries caused by the block (which must not act as erin)."""
    since = len(audit_entries(audit_log))
    collected: list[dict[str, Any]] = []
    yield collected
    collected[:] = await decisions_since(server, audit_log, since)


# --- policy expectations ------------------------------------------------------------------------


# --- Vault --------------------------------------------------------------------------------------


@asynccontextmanager
async def open_identities(settings: Settings) -> AsyncIterator[Any]:
    """The server's Vault identities, opened as the Runtime opens them (login + every mint)."""
    from server.capability import registry
    from server.vault.identities import Identities
    from tools import CAPABILITIES

    identities = Identities(settings, registry.identities(CAPABILITIES))
    await identities.open()
    try:
        yield identities
    finally:
        await identities.close()


def live_token(identities: Any, name: str) -> str:
    """The current token of an identity, for tests that talk to Vault directly with it."""
    held = identities._server if name == "server" else identities._children[name]
    return str(held.lease.token)


def requests_by(log: Any, since: int, identity: str) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in log.since(since) if r.label.identity == identity]


# --- spans ----------------------------------------------------------------------------------------


@contextmanager
def caller_span(name: str = "caller") -> Iterator[int]:
    """Run the block inside a span of a calling service; yields its trace id.

    The MCP client in the block puts the trace context in ``_meta`` (it sends no HTTP header).
    """
    with trace.get_tracer("tests").start_as_current_span(name) as span:
        yield span.get_span_context().trace_id


def in_trace(spans: Sequence[ReadableSpan], trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans if s.context is not None and s.context.trace_id == trace_id]


SERVER = trace.SpanKind.SERVER


def one(
    spans: Sequence[ReadableSpan],
    name: str,
    kind: trace.SpanKind | None = None,
    **attributes: Any,
) -> ReadableSpan:
    """The single span called ``name`` (of ``kind``) whose attributes include ``attributes``."""
    found = [
        s
        for s in spans
        if s.name == name
        and (kind is None or s.kind == kind)
        and all((s.attributes or {}).get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, f"{len(found)} spans {name!r} {attributes}: {[s.name for s in spans]}"
    return found[0]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def is_server_side(span: ReadableSpan) -> bool:
    """Not one of the test client's own spans (a real client would export those elsewhere)."""
    scope = span.instrumentation_scope.name if span.instrumentation_scope else ""
    return not (span.kind == trace.SpanKind.CLIENT and scope in ("fastmcp", "mcp-python-sdk"))


async def spans_of_trace(
    exporter: InMemorySpanExporter,
    trace_id: int,
    until: Callable[[list[ReadableSpan]], bool],
    *,
    within: float = 5,
) -> list[ReadableSpan]:
    """The trace's finished spans once ``until`` holds (spans end just after responses)."""
    deadline = time.monotonic() + within
    while True:
        spans = in_trace(exporter.get_finished_spans(), trace_id)
        if until(spans):
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"trace incomplete after {within}s: {[s.name for s in spans]}")
        await asyncio.sleep(0.02)


def has(name: str, kind: trace.SpanKind = SERVER) -> Callable[[list[ReadableSpan]], bool]:
    return lambda spans: any(s.name == name and s.kind == kind for s in spans)


# --- a collector ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: int
    span_id: int
    parent_id: int
    attributes: dict[str, Any]


class OtlpReceiver:
    """A minimal OTLP/HTTP trace collector on a loopback port, keeping what it receives."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver._keep(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.traces_url = f"{self.base_url}/v1/traces"

    def _keep(self, request: Any) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            trace_id=int.from_bytes(span.trace_id, "big"),
                            span_id=int.from_bytes(span.span_id, "big"),
                            parent_id=int.from_bytes(span.parent_span_id or b"\0", "big"),
                            attributes={
                                a.key: getattr(
                                    a.value, a.value.WhichOneof("value") or "string_value"
                                )
                                for a in span.attributes
                            },
                        )
                    )
        with self._lock:
            self.spans.extend(received)

    def of_trace(self, trace_id: int) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def __enter__(self) -> OtlpReceiver:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


# --- the HTTP edge ----------------------------------------------------------------------------


def hostile_bodies(size: int) -> dict[str, bytes]:
    """Bodies at the size limit that made a backtracking string scan quadratic."""
    return {
        "unterminated string of escaped quotes": b'"' + b'\\"' * ((size - 1) // 2),
        "quote-backslash pairs": b'"\\' * (size // 2),
        "escaped quotes ending in a lone backslash": b'"\\"' * ((size - 1) // 3) + b"\\",
    }


# --- stand-in PDPs, for faults the real one cannot produce ------------------------------------


class GrpcServicerThread:
    """Serves a stand-in Cerbos servicer (a fault the real PDP cannot produce) on a loopback
    port, in a thread with its own event loop."""

    def __init__(self, servicer: Any) -> None:
        self.port = free_port()
        self.servicer = servicer
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> GrpcServicerThread:
        self.thread.start()

        async def serve() -> grpc.aio.Server:
            server = grpc.aio.server()
            svc_pb2_grpc.add_CerbosServiceServicer_to_server(self.servicer, server)
            server.add_insecure_port(f"127.0.0.1:{self.port}")
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# --- server logs ----------------------------------------------------------------------------------

# Loggers of the server side: the runtime, the capabilities, FastMCP (which does not propagate to
# the root logger) and the MCP SDK's server. The test client's own loggers are left out.
SERVER_LOGGERS = ("server", "tools", "fastmcp", "mcp.server")


@contextmanager
def server_logs() -> Iterator[list[logging.LogRecord]]:
    """Every log record (INFO and up) the server side emits during the block."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            ours = record.name.startswith(SERVER_LOGGERS)
            client = record.name.startswith("fastmcp.client")
            seen = any(kept is record for kept in records)  # reached both handlers
            if ours and not client and not seen:
                records.append(record)

    handler = Keep(logging.INFO)
    # FastMCP's logger does not propagate: listen there as well as at the root.
    loggers = [logging.getLogger(), logging.getLogger("fastmcp")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


# --- PostgreSQL, as its owner ---------------------------------------------------------------------


@asynccontextmanager
async def as_owner(database: Any) -> AsyncIterator[Any]:
    """A connection to a throwaway PostgreSQL (ops.postgres_server.PostgresServer) as the
    database's owner, not as any capability: to see what is really stored."""
    import asyncpg

    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=database.port,
        user=database.owner,
        password=database.owner_password,
        database=database.database,
    )
    try:
        yield conn
    finally:
        await conn.close()


# --- raw MCP requests -----------------------------------------------------------------------------

# The handshake-era (2025-11-25) initialize request, as raw JSON-RPC.
LEGACY_INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
