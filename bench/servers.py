"""Server variants for the benchmark, each run as its own process: ``python -m bench.servers``.

- ``bare``: plain FastMCP with the same ``get_ticket`` body on the same store; no authentication,
  no authorization, no tracing. The baseline.
- ``full``: the template exactly as ``python -m server serve`` builds it.
- ``otlp-sink``: a collector that accepts OTLP/HTTP trace exports and drops them, so the
  traced variant pays for exporting without the bench paying for decoding.
- ``list-batched`` / ``list-per-tool``: the template with extra read-only tools up to ``--tools``,
  listing them with the template's one batched check, or with one PDP check per tool (as
  cerbos-fastmcp does it: a sequential ``is_allowed`` per tool).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastmcp import FastMCP
from mcp.types import ToolAnnotations
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.app import create_http_app, create_server
from server.authz import components
from server.authz.middleware import AuthorizationMiddleware
from server.settings import Settings
from server.store.core import Store
from tools.tickets.models import Ticket, TicketId, TicketOut
from tools.tickets.seed import demo_tickets


def bare_server(database_url: str) -> FastMCP[Any]:
    store = Store(database_url)

    @asynccontextmanager
    async def lifespan(_: FastMCP[Any]) -> AsyncIterator[dict[str, Any]]:
        # The baseline serves only get_ticket: the tickets' table and demo rows, no Vault.
        await store.start(tables=[Ticket.__table__])  # type: ignore[list-item]
        await store.seed_if_empty([Ticket.__table__], lambda: demo_tickets(None))  # type: ignore[list-item,arg-type]
        yield {}
        await store.close()

    mcp: FastMCP[Any] = FastMCP(
        "bare", lifespan=lifespan, mask_error_details=True, strict_input_validation=True
    )

    @mcp.tool()
    async def get_ticket(ticket_id: TicketId) -> TicketOut:
        """Get one ticket (no authorization at all)."""
        async with store.transaction() as session:
            row = await session.get(Ticket, ticket_id)
            if row is None:
                raise ValueError("not found")
            return TicketOut.of(row)

    return mcp


class PerToolListChecks(AuthorizationMiddleware):
    """Lists the way per-tool middlewares do: one PDP round-trip per component, in sequence."""

    async def _filter(self, items: Sequence[Any], to_ref: Any) -> list[Any]:
        allowed = []
        for item in items:
            result = await self._decide([(to_ref(item), (components.LIST_ACTION,))])
            if result.decisions[0].allowed(components.LIST_ACTION):
                allowed.append(item)
        return allowed


def only_report_tools(mcp: FastMCP[Any], count: int) -> None:
    """Exactly ``count`` listable tools: the examples hidden, read-only report tools added."""
    mcp.disable(tags={"tickets", "accounts"})
    add_report_tools(mcp, count)


def add_report_tools(mcp: FastMCP[Any], count: int) -> None:
    """``count`` trivial read-only support tools, to list many components."""
    for i in range(count):

        def report(i: int = i) -> str:
            return f"report {i}"

        mcp.tool(
            report,
            name=f"report_{i:03d}",
            tags={"reports"},
            meta={"department": "support", "sensitivity": "internal"},
            annotations=ToolAnnotations(read_only_hint=True),
        )


def otlp_sink() -> Starlette:
    empty = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

    async def traces(request: Request) -> Response:
        await request.body()
        return Response(empty, media_type="application/x-protobuf")

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "variant", choices=["bare", "full", "list-batched", "list-per-tool", "otlp-sink"]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tools", type=int, default=0, help="listable tools (list variants)")
    args = parser.parse_args()

    if args.variant == "otlp-sink":
        uvicorn.run(otlp_sink(), host="127.0.0.1", port=args.port, log_level="warning")
        return
    settings = Settings(port=args.port)  # from the environment, as for `python -m server serve`
    if args.variant == "bare":
        app: Any = bare_server(settings.database_url).http_app(path="/mcp")
    else:
        mcp = create_server(settings)
        if args.variant.startswith("list-"):
            only_report_tools(mcp, args.tools)
        if args.variant == "list-per-tool":
            mcp.middleware[:] = [
                PerToolListChecks(m.pdp, local_principal=None)
                if isinstance(m, AuthorizationMiddleware)
                else m
                for m in mcp.middleware
            ]
        app = create_http_app(mcp, settings)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
