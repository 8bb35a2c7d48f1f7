"""The server factory: ``create_server(settings)`` builds everything, and nothing runs at import.

Construction does no I/O: it loads the registered capabilities (``MCP_CAPABILITIES``), checks
their declarations and puts their components on the server. The lifespan opens the PDP channel,
Vault and the store inside the running loop, checks that every component declares what the
policies need, and closes them on exit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastmcp import FastMCP
from fastmcp.telemetry import suppress_fastmcp_telemetry
from starlette.middleware import Middleware as ASGIMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from server.authz import components
from server.authz.errors import quiet_expected_outcomes
from server.authz.middleware import SERVED_METHODS, AuthorizationMiddleware
from server.authz.request_state import request_state_security
from server.capability import registry
from server.capability.declaration import Capability
from server.capability.scope import CapabilityScope
from server.edge import health
from server.edge.authn import EdgeAuthProvider, build_auth_provider
from server.edge.limits import BodyLimits, DeclaredSizeLimit
from server.edge.origin import OriginGuard
from server.edge.ratelimit import AddressThrottle, PrincipalThrottle, RateLimiter
from server.runtime import Runtime, build_runtime
from server.settings import Settings
from server.telemetry.setup import HttpTraceContext

log = logging.getLogger(__name__)


def create_server(
    settings: Settings,
    capabilities: Sequence[Capability] | None = None,
    runtime: Runtime | None = None,
) -> FastMCP[Any]:
    """The MCP server for ``capabilities`` (default: those ``settings.capabilities`` names);
    ``runtime`` is built from both unless given (tests inspect it)."""
    if capabilities is None:
        capabilities = runtime.capabilities if runtime else registry.load(settings.capabilities)
    runtime = runtime or build_runtime(settings, capabilities)
    pdp = runtime.pdp
    # Not found, not permitted, invalid input: one log line each, never a traceback.
    quiet_expected_outcomes()

    @asynccontextmanager
    async def lifespan(server: FastMCP[Any]) -> AsyncIterator[dict[str, Any]]:
        await runtime.start()
        try:
            # A startup check, not a request: no server spans for its internal listings.
            with suppress_fastmcp_telemetry():
                await _require_policy_metadata(server)
            server_state["ready"] = True
            yield {"runtime": runtime}
        finally:
            server_state["ready"] = False
            await runtime.close()

    server_state = {"ready": False}
    mcp: FastMCP[Any] = FastMCP(
        name=settings.server_name,
        instructions=registry.instructions(capabilities),
        auth=build_auth_provider(settings) if settings.transport == "http" else None,
        lifespan=lifespan,
        middleware=[
            # Rate limits are enforced at the HTTP edge, before any MCP work (create_http_app).
            AuthorizationMiddleware(pdp, local_principal=settings.stdio_principal)
        ],
        # Exceptions from tool bodies reach the client as a generic message; tools raise
        # ToolError with a safe text when the caller should learn why.
        mask_error_details=True,
        # "5" is not an integer: wrong types are schema errors, not guesses.
        strict_input_validation=True,
        on_duplicate="error",
        # Sealed with the key every replica reads from Vault, not a key of this process: a
        # question asked by one replica is answered on another (server/authz/request_state.py).
        request_state_security=request_state_security(
            runtime.request_state, audience=settings.server_name
        ),
    )
    owners = registry.register(mcp, capabilities)
    # Inside authorization (added after it): binds the running component's capability, so that
    # the component receives its own capability's store.
    mcp.add_middleware(CapabilityScope(owners))
    _advertise_only_served_methods(mcp)
    skip_listing_per_call(mcp)

    for path, probe in health.probes(runtime, lambda: server_state["ready"]).items():
        mcp.custom_route(path, methods=["GET"], include_in_schema=False)(probe)

    return mcp


def skip_listing_per_call(mcp: FastMCP[Any]) -> None:
    """Give the MCP SDK the tool-schema lookup it would otherwise make with a whole listing.

    On 2026-07-28 connections the SDK validates `Mcp-Param-*` headers of every tools/call
    against the tool's schema. Without a lookup it finds the schema by running a whole
    tools/list for the caller: one extra batched authorization per call. Validation only
    concerns parameters a schema mirrors into headers (`x-mcp-header`); the lifespan refuses
    tools that declare any, so "no schema" validates exactly the same, without the listing.
    """
    mcp._mcp_server.get_tool_input_schema = _no_header_mirrored_parameters


def _no_header_mirrored_parameters(_tool_name: str) -> None:
    return None


def _advertise_only_served_methods(mcp: FastMCP[Any]) -> None:
    """Unregister the SDK request handlers of methods the authorization middleware refuses.

    The MCP SDK derives the advertised capabilities from the registered handlers. FastMCP
    registers one for ``logging/setLevel``, so ``initialize`` and ``server/discover`` advertised
    ``logging``; clients that see it (MCP Inspector) call ``logging/setLevel`` right after
    connecting, get "method not found" from the middleware and give up. This server sends no
    log messages to clients, so it serves no logging: it stops advertising it instead. Any
    other handler off the allowlist goes the same way.
    """
    handlers = mcp._mcp_server._request_handlers
    for method in [m for m in handlers if m not in SERVED_METHODS]:
        del handlers[method]


class UnsupportedToolDeclaration(ValueError):
    pass


async def _require_policy_metadata(server: FastMCP[Any]) -> None:
    registered = await server.list_tools(run_middleware=False)
    mirrored = [t.name for t in registered if "x-mcp-header" in json.dumps(t.parameters)]
    if mirrored:
        # Header validation would then depend on the caller's visibility, which the SDK can only
        # learn through an unauthorized schema lookup here.
        raise UnsupportedToolDeclaration(
            f"tools mirroring parameters into Mcp-Param headers are not supported: {mirrored}"
        )
    refs = [components.tool_resource(t) for t in registered]
    refs += [
        components.resource_resource(r) for r in await server.list_resources(run_middleware=False)
    ]
    refs += [
        components.resource_resource(t)
        for t in await server.list_resource_templates(run_middleware=False)
    ]
    refs += [components.prompt_resource(p) for p in await server.list_prompts(run_middleware=False)]
    components.require_policy_metadata(refs)


def create_http_app(mcp: FastMCP[Any], settings: Settings) -> Any:
    """The ASGI app. The edge refuses the cheapest way first, and reads a body only for an
    authenticated caller within its limit (docs/security-edge.md):

    1. per-address limit on requests that do not authenticate (429) - a dictionary lookup
    2. declared ``Content-Length`` beyond the size limit (413) - a header
    3. Host / Origin guard against DNS rebinding (421 / 403) - headers
    4. bearer authentication, once; two ``Authorization`` headers (400); the verdict is read by
       FastMCP's MCP route, which answers 401 without touching the body
    5. per-principal limit (429) - a dictionary lookup
    6. body read up to the size limit (413), JSON depth scan, linear (400)
    7. MCP: the authorization middleware, then the component
    """
    auth = mcp.auth
    if not isinstance(auth, EdgeAuthProvider):
        raise TypeError("the HTTP app needs the server built for transport 'http'")
    address_limiter = (
        RateLimiter(settings.preauth_rate_limit_per_second, settings.preauth_rate_limit_burst)
        if settings.preauth_rate_limit_per_second > 0
        else None
    )
    principal_limiter = (
        RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        if settings.rate_limit_per_second > 0
        else None
    )
    edge: list[ASGIMiddleware] = []
    if address_limiter is not None:
        edge.append(ASGIMiddleware(AddressThrottle, limiter=address_limiter))
    edge += [
        ASGIMiddleware(DeclaredSizeLimit, max_body_bytes=settings.max_body_bytes),
        ASGIMiddleware(
            OriginGuard,
            allowed_hosts=settings.allowed_hosts,
            allowed_origins=settings.allowed_origins,
            own_origin=settings.base_url,
        ),
        *auth.authentication_middleware(),
    ]
    if address_limiter is not None or principal_limiter is not None:
        edge.append(
            ASGIMiddleware(
                PrincipalThrottle, limiter=principal_limiter, address_limiter=address_limiter
            )
        )
    edge.append(
        ASGIMiddleware(
            BodyLimits,
            max_body_bytes=settings.max_body_bytes,
            max_json_depth=settings.max_json_depth,
        )
    )
    app: Any = mcp.http_app(
        path=settings.path,
        transport="http",
        middleware=edge,
        # The edge has its own Host/Origin guard (server/edge/origin.py) at step 3.
        host_origin_protection=False,
    )
    app = HttpTraceContext(app)
    if settings.trusted_proxies:
        # The client address (and scheme) from the forwarded headers of a listed proxy only:
        # the rightmost address that is not a trusted proxy.
        app = ProxyHeadersMiddleware(app, trusted_hosts=settings.trusted_proxies)
    return app
