"""A span per SQL statement the store runs: operation, table, and the statement's text.

The text is the parametrized statement SQLAlchemy sends (values travel separately as bound
parameters), so it shows the WHERE clause a query plan turned into without showing any value.
Parameters are never recorded.
"""

from __future__ import annotations

import re
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

_tracer = trace.get_tracer("server.store")

_SPAN_KEY: Final = "otel_span"
_MAX_TEXT: Final = 2000
_TARGET = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+[\"`]?(\w+)", re.IGNORECASE)


def _tracer_records() -> bool:
    """Whether spans are recorded at all (an SDK provider is installed)."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def instrument(engine: AsyncEngine) -> None:
    """Trace every statement ``engine`` executes, under the span that is current."""
    sync_engine = engine.sync_engine
    system = sync_engine.dialect.name

    def before(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if not trace.get_current_span().is_recording() and not _tracer_records():
            return  # no SDK: nothing would be recorded, so build nothing
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        target = _TARGET.search(statement)
        table = target.group(1) if target else ""
        attributes = {
            "db.system.name": system,
            "db.operation.name": operation,
            "db.query.text": statement[:_MAX_TEXT],
        }
        if table:
            attributes["db.collection.name"] = table
        span = _tracer.start_span(
            f"{operation} {table}".strip(), kind=SpanKind.CLIENT, attributes=attributes
        )
        conn.info[_SPAN_KEY] = span

    def after(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        span = conn.info.pop(_SPAN_KEY, None)
        if span is not None:
            span.end()

    def failed(context: ExceptionContext) -> None:
        if context.connection is None:
            return
        span = context.connection.info.pop(_SPAN_KEY, None)
        if span is not None:
            # The type only: driver messages can quote values.
            error = type(context.original_exception).__name__
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
            span.end()

    event.listen(sync_engine, "before_cursor_execute", before)
    event.listen(sync_engine, "after_cursor_execute", after)
    event.listen(sync_engine, "handle_error", failed)
