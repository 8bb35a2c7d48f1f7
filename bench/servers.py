"""Server variants for the benchmark, each run as its own process: ``python -m bench.servers``.

Every variant is the same FastMCP with the same registered tools (the capabilities of
``MCP_CAPABILITIES``, the same functions), the same tool-schema lookup, the same store and the
same uvicorn settings. What differs is only what the template adds:

- ``bare``: no authentication, no authorization, no tracing. Tools still take ``RecordAccess``
  by injection, so bare injects ``AllowEverythingRecords``: a stand-in that allows every record
  decision without asking anyone. Every request runs as one fixed principal, bound once at
  startup. The database is a copy of the full stack's seeded one (``--database-url``).
- ``full``: the template exactly as ``python -m server serve`` builds it (settings from the
  environment). ``--tracing`` picks what happens to spans: ``none`` (no SDK), ``sdk`` (the SDK
  creates and ends every span but nothing is exported) or ``export`` (``MCP_OTEL_*``: batched
  OTLP export). ``--records local`` answers the tools' record decisions in-process
  (``LocalRecordDecisions``), to measure what the record decision's PDP round trip costs.
- ``list``: ``--tools N`` listable report tools (the capabilities' own tools hidden), listed by
  ``--lists bare`` (no authorization), ``batched`` (the template) or ``per-tool`` (one PDP
  check per tool, in sequence, no cache: as cerbos-fastmcp does it).
- ``otlp-sink``: a collector that accepts OTLP/HTTP trace exports and drops them.

Variants built from the template answer ``GET /bench/stats`` with their caches' counters.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from cerbos.engine.v1 import engine_pb2
from cerbos.response.v1 import response_pb2
from fastmcp import FastMCP
from mcp.types import ToolAnnotations
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.app import create_http_app, create_server, skip_listing_per_call
from server.authz import components
from server.authz.decisions import ActionDecision, CheckResult, ResourceDecision, ResourceRef
from server.authz.middleware import AuthorizationMiddleware
from server.authz.request_context import RequestInfo, bind_request
from server.capability import registry
from server.capability.scope import CapabilityScope
from server.edge.principal import Principal
from server.runtime import build_runtime, tune_garbage_collection
from server.settings import Settings
from server.store.core import Store
from server.store.stores import Stores
from server.telemetry import setup as telemetry

# --- bare --------------------------------------------------------------------------------------

BARE_PRINCIPAL = Principal(id="bare", roles=("bare",), department="bare")


class AllowEverythingRecords:
    """Stand-in for the PDP in the bare server, named as such: every record decision is ALLOW
    and every query plan is "all rows", decided in-process without asking anyone."""

    async def check(
        self,
        principal: Principal,
        entries: Sequence[tuple[ResourceRef, Sequence[str]]],
        *,
        request_id: str,
        must_allow: Collection[str] = (),
    ) -> CheckResult:
        return CheckResult(
            request_id=request_id,
            call_ids=(),
            decisions=tuple(
                ResourceDecision(
                    resource=ref,
                    actions={a: ActionDecision(a, True, "bare:allow-everything") for a in actions},
                )
                for ref, actions in entries
            ),
        )

    async def plan(
        self, principal: Principal, kind: str, action: str, *, request_id: str
    ) -> response_pb2.PlanResourcesResponse:
        return response_pb2.PlanResourcesResponse(
            request_id=request_id,
            action=action,
            resource_kind=kind,
            filter=engine_pb2.PlanResourcesFilter(
                kind=engine_pb2.PlanResourcesFilter.KIND_ALWAYS_ALLOWED
            ),
        )


class LocalRecordDecisions:
    """The full stack's PDP client, except that the tools' record decisions and query plans are
    answered in-process with "allowed" (``AllowEverythingRecords``). The tool gate still asks the
    real PDP (the middleware holds the real client). Only for measuring the record decision."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self._local = AllowEverythingRecords()
        self.check = self._local.check
        self.plan = self._local.plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class NoVault:
    def tool(self, name: str) -> Any:
        raise RuntimeError(f"the bare server has no Vault: tool identity {name!r} unavailable")


@dataclass
class BareRuntime:
    """What tools reach through injection (``get_store``, ``get_record_access``)."""

    stores: Stores
    pdp: AllowEverythingRecords
    identities: NoVault


def bare_server(settings: Settings) -> FastMCP[Any]:
    """The template's FastMCP, tools and store, without anything the template adds."""
    capabilities = registry.load(settings.capabilities)
    # One SQLite store shared by every capability, as the full stack builds it on SQLite.
    store = Store(settings.database_url, pool_size=settings.database_pool_size)
    stores = Stores({c.name: store for c in capabilities})
    runtime = BareRuntime(stores=stores, pdp=AllowEverythingRecords(), identities=NoVault())
    tables = registry.all_tables(capabilities)

    @asynccontextmanager
    async def lifespan(_: FastMCP[Any]) -> AsyncIterator[dict[str, Any]]:
        await store.start(tables=tables)  # the rows are already there (a copy)
        yield {"runtime": runtime}
        await store.close()

    mcp: FastMCP[Any] = FastMCP(
        name=settings.server_name,
        instructions=registry.instructions(capabilities),
        lifespan=lifespan,
        mask_error_details=True,
        strict_input_validation=True,
        on_duplicate="error",
    )
    # The same component -> capability binding the full stack runs after its ALLOW.
    mcp.add_middleware(CapabilityScope(registry.register(mcp, capabilities)))
    skip_listing_per_call(mcp)
    return mcp


# --- lists -------------------------------------------------------------------------------------


class PerToolListChecks(AuthorizationMiddleware):
    """Lists the way per-tool middlewares do: one PDP round-trip per component, in sequence,
    nothing cached."""

    async def _filter(self, items: Sequence[Any], to_ref: Any) -> list[Any]:
        allowed = []
        for item in items:
            result = await self._ask_pdp([(to_ref(item), (components.LIST_ACTION,))], ())
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


# --- the sink ----------------------------------------------------------------------------------


def otlp_sink() -> Starlette:
    empty = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

    async def traces(request: Request) -> Response:
        await request.body()
        return Response(empty, media_type="application/x-protobuf")

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


# --- cache counters ----------------------------------------------------------------------------


class BenchStats:
    """``GET /bench/stats``: the counters of the server's caches, for hit rates per phase."""

    def __init__(self, app: Any, mcp: FastMCP[Any]) -> None:
        self.app = app
        self.mcp = mcp

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/bench/stats":
            body = json.dumps(cache_stats(self.mcp)).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def cache_stats(mcp: FastMCP[Any]) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = {}
    verifier = getattr(getattr(mcp, "auth", None), "token_verifier", None)
    if verifier is not None and hasattr(verifier, "stats"):
        stats["verified_tokens"] = verifier.stats()
    for middleware in mcp.middleware:
        if isinstance(middleware, AuthorizationMiddleware) and hasattr(middleware, "cache_stats"):
            stats.update(middleware.cache_stats())
    return stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=["bare", "full", "list", "otlp-sink"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tracing", choices=["none", "sdk", "export"], default="none")
    parser.add_argument("--tools", type=int, default=0, help="listable tools (list variant)")
    parser.add_argument("--lists", choices=["bare", "batched", "per-tool"], default="batched")
    parser.add_argument("--records", choices=["pdp", "local"], default="pdp")
    args = parser.parse_args()

    if args.variant == "otlp-sink":
        uvicorn.run(otlp_sink(), host="127.0.0.1", port=args.port, log_level="warning")
        return
    settings = Settings(port=args.port)  # from the environment, as for `python -m server serve`
    app: Any
    if args.variant == "bare" or (args.variant == "list" and args.lists == "bare"):
        mcp = bare_server(settings)
        if args.variant == "list":
            only_report_tools(mcp, args.tools)
        # No authentication: every request runs as one principal, bound once for the process
        # (each request's task inherits the context it was created in).
        bind_request(RequestInfo(request_id="bare", principal=BARE_PRINCIPAL))
        app = mcp.http_app(path=settings.path, transport="http")
    else:
        if args.tracing == "sdk":
            # The SDK records every span; no processor is attached, so nothing leaves the
            # process (and nothing is redacted or queued either).
            telemetry.install(settings)
        runtime = build_runtime(settings)
        mcp = create_server(settings, runtime=runtime)
        if args.records == "local":
            # Tools reach the PDP through the runtime; the middleware keeps its own reference.
            runtime.pdp = LocalRecordDecisions(runtime.pdp)  # type: ignore[assignment]
        if args.variant == "list":
            only_report_tools(mcp, args.tools)
            if args.lists == "per-tool":
                mcp.middleware[:] = [
                    PerToolListChecks(m.pdp, local_principal=None)
                    if isinstance(m, AuthorizationMiddleware)
                    else m
                    for m in mcp.middleware
                ]
        app = BenchStats(create_http_app(mcp, settings), mcp)
    # The process is tuned as `python -m server serve` tunes its own, bare included.
    tune_garbage_collection(settings)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()
