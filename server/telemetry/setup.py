"""OpenTelemetry: the one module that configures the SDK, the resource and the exporters.

Everything else uses only the OTel API (``trace.get_tracer``); FastMCP does too. Without an
exporter configured (``MCP_OTEL_EXPORTER=none``) no SDK is installed, spans cost next to nothing,
and trace context still flows to the PDP.

The SDK is process-wide: OTel lets a process set its global tracer provider once, and FastMCP
creates its server spans on the global one. So the provider is installed on first use and stays;
what comes and goes with a server (and with a test) is a *span processor*, attached to the
provider's router on lifespan start and detached on close.

Nothing here runs at import time, and nothing can fail a request: spans wait in a bounded queue
(the oldest are dropped when it is full), exports run on a background thread with a short
timeout, closing gives up on a collector that does not answer, and a processor that raises is
logged and skipped.

Every span is redacted before any processor sees it (``redact``): exception messages, error
descriptions of other libraries' spans and URL query strings go. Those are the places where
third-party instrumentation copies request data, e.g. pydantic quoting an invalid tool argument.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import sys
import threading
import uuid
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    Span,
    SpanLimits,
    SpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Status
from opentelemetry.util.types import Attributes
from starlette.types import ASGIApp, Receive, Scope, Send

from server.settings import Settings

log = logging.getLogger(__name__)

# A list check of the largest batch (200 resources x a few actions) records one event per
# decision; the SDK's default of 128 events per span would silently drop the rest.
MAX_EVENTS_PER_SPAN: Final = 1024
# Header names never captured on HTTP spans, whatever OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*
# an operator sets: the bearer token travels in the first one.
SENSITIVE_HEADERS: Final = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    ".*token.*",
    ".*secret.*",
]


# --- the process-wide provider --------------------------------------------------------------------


class ProcessorRouter(SpanProcessor):
    """One span processor on the provider that forwards to whatever is attached right now.

    The SDK can add processors to a provider but never remove them; servers (and tests) that
    start and stop in one process attach and detach theirs here instead. Ended spans are
    redacted once, here, so no processor ever sees the unredacted span.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processors: tuple[SpanProcessor, ...] = ()

    def attach(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors = (*self._processors, processor)

    def detach(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors = tuple(p for p in self._processors if p is not processor)

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        for processor in self._processors:
            try:
                processor.on_start(span, parent_context=parent_context)
            except Exception:
                log.exception("tracing: span processor failed; the request goes on")

    def on_end(self, span: ReadableSpan) -> None:
        processors = self._processors
        if not processors:
            return
        try:
            span = redact(span)
        except Exception:
            log.exception("tracing: could not redact a span; dropping it")
            return
        for processor in processors:
            try:
                processor.on_end(span)
            except Exception:
                log.exception("tracing: span processor failed; the request goes on")

    def shutdown(self) -> None:
        for processor in self._processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self._processors)


# --- redaction -----------------------------------------------------------------------------------

# Our own instrumentation writes only reviewed values, error descriptions included.
OWN_SCOPE_PREFIX: Final = "server."
_URL_ATTRIBUTES: Final = ("http.url", "http.target", "url.full")
_QUERY_ATTRIBUTES: Final = ("url.query",)


def redact(span: ReadableSpan) -> ReadableSpan:
    """The span without the text where libraries copy request data; unchanged if it has none.

    - exception events keep ``exception.type`` and the stack's frame lines, never the message
      (which can quote arguments, URLs or tokens);
    - another library's ERROR status keeps no description (the same text), ``error.type`` stays;
    - URLs lose their query string.
    """
    scope = span.instrumentation_scope.name if span.instrumentation_scope else ""
    own = scope.startswith(OWN_SCOPE_PREFIX)
    attributes = span.attributes or {}
    url_keys = [k for k in _URL_ATTRIBUTES if "?" in str(attributes.get(k, ""))]
    query_keys = [k for k in _QUERY_ATTRIBUTES if k in attributes]
    has_exception = any(e.name == "exception" for e in span.events)
    described = not own and span.status.description is not None
    if not (url_keys or query_keys or has_exception or described):
        return span
    if url_keys or query_keys:
        attributes = {k: v for k, v in attributes.items() if k not in query_keys}
        for key in url_keys:
            attributes[key] = str(attributes[key]).split("?", 1)[0]
    return ReadableSpan(
        name=span.name,
        context=span.get_span_context(),
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=[_redact_event(e) for e in span.events],
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code) if described else span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _redact_event(event: Event) -> Event:
    if event.name != "exception":
        return event
    attributes = dict(event.attributes or {})
    attributes.pop("exception.message", None)
    stack = str(attributes.get("exception.stacktrace", ""))
    frames = [line for line in stack.splitlines() if line.startswith('  File "')]
    attributes["exception.stacktrace"] = "\n".join(frames)
    return Event(event.name, attributes, event.timestamp)


class CachingTracerProvider(TracerProvider):
    """The SDK's provider, with ``get_tracer`` answered from a dictionary after the first call.

    FastMCP asks for its tracer on every request. The SDK's ``get_tracer`` rebuilds the
    instrumentation scope and rewrites the process's warning filters on every call (which also
    invalidates every warning registry), some 50-100 µs each time, before it finds the tracer it
    already made. A tracer holds no per-request state, so handing out the same one is what the
    SDK itself does, minus the rebuilding.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._made: dict[tuple[str, str | None, str | None], trace.Tracer] = {}

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        if attributes:  # rare, and not hashable as given: the SDK's own path
            return super().get_tracer(
                instrumenting_module_name, instrumenting_library_version, schema_url, attributes
            )
        key = (instrumenting_module_name, instrumenting_library_version, schema_url)
        tracer = self._made.get(key)
        if tracer is None:
            tracer = self._made[key] = super().get_tracer(*key)
        return tracer


_router = ProcessorRouter()
_install_lock = threading.Lock()
_installed = False


def install(settings: Settings) -> None:
    """Make sure the process has an SDK tracer provider that feeds the router. Idempotent.

    The first call defines the resource. If the process already has an SDK provider (e.g. the
    app runs under ``opentelemetry-instrument``), the router joins that one, and its resource,
    its sampler and its own processors (which see spans unredacted) apply.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            current.add_span_processor(_router)
            log.warning(
                "tracing: joined the process's existing tracer provider; its sampler applies "
                "and its own processors receive spans without this module's redaction"
            )
        else:
            provider = CachingTracerProvider(
                resource=resource(settings),
                # Every request is traced, whatever the caller asks: an unsampled incoming
                # traceparent must not let a caller switch off the record of its own decisions.
                sampler=ALWAYS_ON,
                span_limits=SpanLimits(max_events=MAX_EVENTS_PER_SPAN),
            )
            provider.add_span_processor(_router)
            trace.set_tracer_provider(provider)
        _installed = True


def attach(processor: SpanProcessor) -> None:
    """Send every span ended in this process to ``processor`` too (until ``detach``)."""
    _router.attach(processor)


def detach(processor: SpanProcessor) -> None:
    _router.detach(processor)


def resource(settings: Settings) -> Resource:
    return Resource.create(
        {
            "service.name": settings.otel_service_name or settings.server_name,
            "service.version": settings.service_version or package_version(),
            "service.instance.id": uuid.uuid4().hex,
            "deployment.environment.name": settings.environment,
        }
    )


def package_version() -> str:
    try:
        return importlib.metadata.version("mcp-server-template")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


# --- exporters ------------------------------------------------------------------------------------


def build_exporter(settings: Settings) -> SpanExporter | None:
    """The exporter ``settings`` ask for; ``None`` for ``MCP_OTEL_EXPORTER=none``."""
    if settings.otel_exporter == "console":
        # stderr: on the stdio transport, stdout is the MCP channel.
        return ConsoleSpanExporter(out=sys.stderr, formatter=one_line)
    if settings.otel_exporter == "otlp":
        endpoint = settings.otel_traces_endpoint
        timeout = settings.otel_export_timeout_seconds
        if settings.otel_protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            return GrpcExporter(endpoint=endpoint, timeout=timeout)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(endpoint=endpoint, timeout=timeout)
    return None


def one_line(span: ReadableSpan) -> str:
    """A compact console line per span: trace, duration, status, attributes and events."""
    ctx = span.get_span_context() or trace.INVALID_SPAN_CONTEXT
    parent = span.parent.span_id if span.parent else 0
    duration_ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    status = span.status.status_code.name
    attrs = " ".join(f"{k}={v!r}" for k, v in (span.attributes or {}).items())
    line = (
        f"[span] trace={ctx.trace_id:032x} span={ctx.span_id:016x} parent={parent:016x} "
        f"{span.name!r} {duration_ms:.2f}ms {status} {attrs}\n"
    )
    for event in span.events:
        event_attrs = " ".join(f"{k}={v!r}" for k, v in (event.attributes or {}).items())
        line += f"         event {event.name} {event_attrs}\n"
    return line


# --- one server's telemetry -----------------------------------------------------------------------


class Telemetry:
    """The exporter of one server instance: attached on lifespan start, flushed on close."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._exporter: SpanExporter | None = None
        self._processor: BatchSpanProcessor | None = None

    def start(self) -> None:
        """Install the SDK (first time only) and attach this server's exporter. No network I/O."""
        exporter = build_exporter(self.settings)
        if exporter is None:
            return
        install(self.settings)
        self._exporter = exporter
        self._processor = BatchSpanProcessor(
            exporter,
            max_queue_size=self.settings.otel_max_queue_size,
            # Encoding a batch runs on the export thread but holds the GIL: small, frequent
            # batches spread that work thinly instead of stalling requests behind one large
            # export (measured, one client: p99 44 ms with 512 / 1 s, 13 ms with 32 / 0.1 s).
            max_export_batch_size=min(32, self.settings.otel_max_queue_size),
            schedule_delay_millis=100,
        )
        attach(self._processor)
        log.info(
            "tracing: exporting spans to %s",
            self.settings.otel_traces_endpoint or self.settings.otel_exporter,
        )

    async def close(self) -> None:
        """Detach and flush what is queued, giving up after about one export timeout."""
        processor, exporter = self._processor, self._exporter
        self._processor = self._exporter = None
        if processor is None or exporter is None:
            return
        detach(processor)
        flushing = threading.Thread(target=processor.shutdown, name="otel-flush", daemon=True)
        flushing.start()
        await asyncio.to_thread(flushing.join, self.settings.otel_export_timeout_seconds + 1)
        if flushing.is_alive():
            # The collector is not answering: abort the exporter's retries rather than hold up
            # the shutdown; the flushing thread then ends on its own.
            exporter.shutdown()
            log.warning("tracing: gave up flushing spans to an unresponsive collector")


# --- instrumentation ------------------------------------------------------------------------------


class HttpTraceContext:
    """Continues a trace from an HTTP ``traceparent`` header, with a span for the HTTP request.

    Only requests that carry the header get the HTTP span. FastMCP reads ``_meta.traceparent``
    (where MCP clients put the context) only when no span is active yet, so an HTTP span on
    every request would make it ignore ``_meta``. Without the header, FastMCP's server span is
    the root of the request, continuing ``_meta.traceparent`` when there is one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.traced = OpenTelemetryMiddleware(
            app,
            # One span per HTTP request, not one per ASGI message.
            exclude_spans=["receive", "send"],
            http_capture_headers_sanitize_fields=SENSITIVE_HEADERS,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(
            name == b"traceparent" for name, _ in scope.get("headers", ())
        ):
            await self.traced(scope, receive, send)
        else:
            await self.app(scope, receive, send)
