"""The authorization middleware: every MCP operation passes a Cerbos decision first.

- Lists (tools, resources, resource templates, prompts) are filtered with one batched
  CheckResources per list.
- A call, read or get is checked before anything runs; a denial is indistinguishable from a
  component that does not exist, and unregistered names take the same path as real ones.
- Methods that reveal no component (handshake, ping) are on an explicit allowlist; every other
  method is refused as unknown.
- Any PDP problem (down, slow, error, malformed reply) denies with "authorization unavailable";
  a list fails visibly instead of coming back empty.
- Arguments refused by a tool's or prompt's schema are answered with a bounded description that
  names the declared parameters at fault and never echoes what was sent.
- Component decisions (the tool gate, lists) may come from the PDP client's short-lived
  decision cache (``MCP_AUTHZ_CACHE_SECONDS``); record-level decisions never do.
- The principal parsed from a token is kept per token (the claims of a token never change).
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from fastmcp.exceptions import McpError, ValidationError
from fastmcp.server.dependencies import get_access_token
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from pydantic import ValidationError as PydanticValidationError

from server.authz import components, tracing
from server.authz.components import ComponentType
from server.authz.decisions import CheckResult, ResourceDecision, ResourceRef
from server.authz.errors import (
    AUTHORIZATION_UNAVAILABLE,
    METHOD_NOT_FOUND,
    NOT_AUTHORIZED,
    UNAVAILABLE_MESSAGE,
    AuthorizationUnavailable,
    ExpectedOutcome,
    InvalidParams,
    invalid_arguments,
    not_found,
)
from server.authz.pdp import PolicyDecisionPoint
from server.authz.request_context import (
    RequestInfo,
    bind_request,
    bind_target,
    current_request,
    unbind_request,
)
from server.edge.principal import InvalidClaims, Principal, principal_from_claims

log = logging.getLogger(__name__)

# Requests that reveal no component and change nothing: served without a decision.
OPEN_METHODS: Final = frozenset({"initialize", "server/discover", "ping"})
# Requests decided by the PDP, in the typed hooks below.
AUTHORIZED_METHODS: Final = frozenset(
    {
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "prompts/get",
    }
)
# Every request method the server serves; the server unregisters any other handler, so that it
# advertises no capability it would refuse (server/app.py).
SERVED_METHODS: Final = OPEN_METHODS | AUTHORIZED_METHODS
# Notifications the protocol needs; any other notification is dropped unprocessed.
OPEN_NOTIFICATIONS: Final = frozenset(
    {"notifications/initialized", "notifications/cancelled", "notifications/progress"}
)

C = TypeVar("C")

# Distinct tokens whose parsed principal is kept (the verifier keeps as many verified tokens).
PRINCIPALS_KEPT: Final = 1024


class AuthorizationMiddleware(Middleware):
    def __init__(
        self,
        pdp: PolicyDecisionPoint,
        *,
        local_principal: Principal | None,
    ) -> None:
        self.pdp = pdp
        # Used only where no HTTP layer exists (stdio, in-process): there is no token there.
        self.local_principal = local_principal
        # token -> (principal, exp): parsing and validating claims is the same work every time.
        self._principals: OrderedDict[str, tuple[Principal, float | None]] = OrderedDict()
        self.principal_hits = 0
        self.principal_misses = 0

    def cache_stats(self) -> dict[str, dict[str, int]]:
        stats = {"principals": {"hits": self.principal_hits, "misses": self.principal_misses}}
        if self.pdp.cache is not None:
            stats["decisions"] = self.pdp.cache.stats()
        return stats

    # --- every request -------------------------------------------------------------------------

    async def on_request(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        method = context.method or ""
        if method in OPEN_METHODS:
            return await call_next(context)
        if method not in AUTHORIZED_METHODS:
            tracing.refuse_request("unknown_method")
            raise McpError(code=METHOD_NOT_FOUND, message="Method not found")
        principal, valid_until = self._principal(context)
        if principal is None:
            tracing.refuse_request("no_principal")
            raise McpError(
                code=NOT_AUTHORIZED, message="Not authorized: no principal for this request"
            )
        request_id = uuid.uuid4().hex
        token = bind_request(
            RequestInfo(request_id=request_id, principal=principal, valid_until=valid_until)
        )
        tracing.tag_request(request_id, principal)
        try:
            return await call_next(context)
        finally:
            unbind_request(token)

    async def on_notification(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        if context.method in OPEN_NOTIFICATIONS:
            return await call_next(context)
        log.debug("dropped notification %s", context.method)
        return None

    def _principal(self, context: MiddlewareContext[Any]) -> tuple[Principal | None, float | None]:
        """The caller and when its credential stops being valid (None: no expiry known)."""
        token = get_access_token()
        if token is not None:
            return self._principal_of(token.token, token.claims)
        transport = context.fastmcp_context.transport if context.fastmcp_context else None
        if transport in ("stdio", None):
            return self.local_principal, None
        return None, None

    def _principal_of(
        self, raw: str, claims: dict[str, Any]
    ) -> tuple[Principal | None, float | None]:
        known = self._principals.get(raw)
        if known is not None:
            self.principal_hits += 1
            self._principals.move_to_end(raw)
            return known
        self.principal_misses += 1
        try:
            principal = principal_from_claims(claims)
        except InvalidClaims:
            return None, None  # the verifier already refuses such tokens; belt and braces
        exp = claims.get("exp")
        parsed = (principal, float(exp) if isinstance(exp, int | float) else None)
        self._principals[raw] = parsed
        while len(self._principals) > PRINCIPALS_KEPT:
            self._principals.popitem(last=False)
        return parsed

    # --- lists: one batched decision per list --------------------------------------------------

    async def on_list_tools(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._filter(await call_next(context), components.tool_resource)

    async def on_list_resources(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._filter(await call_next(context), components.resource_resource)

    async def on_list_resource_templates(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._filter(await call_next(context), components.resource_resource)

    async def on_list_prompts(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._filter(await call_next(context), components.prompt_resource)

    async def _filter(self, items: Sequence[C], to_ref: Callable[[C], ResourceRef]) -> list[C]:
        refs = [to_ref(item) for item in items]
        result = await self._decide([(ref, (components.LIST_ACTION,)) for ref in refs])
        visible = [
            item
            for item, decision in zip(items, result.decisions, strict=True)
            if decision.allowed(components.LIST_ACTION)
        ]
        tracing.list_outcome(len(visible), len(items) - len(visible))
        return visible

    # --- single components: checked before anything runs ---------------------------------------

    async def on_call_tool(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        name = context.message.name
        tool = await _server(context).get_tool(name)
        await self._require("tool", name, tool, components.tool_resource)
        try:
            return await call_next(context)
        except ValidationError as exc:
            cause = exc.__cause__
            if not isinstance(cause, PydanticValidationError):
                raise
            declared = set((tool.parameters or {}).get("properties") or {}) if tool else set()
            details = cause.errors(include_url=False, include_context=False, include_input=False)
            raise InvalidArguments(invalid_arguments(f"tool {name!r}", declared, details)) from None

    async def check_resource_access(self, context: MiddlewareContext[Any]) -> None:
        uri = str(context.message.uri)
        server = _server(context)
        resource = await server.get_resource(uri) or await server.get_resource_template(uri)
        await self._require("resource", uri, resource, components.resource_resource)

    async def on_get_prompt(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        name = context.message.name
        prompt = await _server(context).get_prompt(name)
        await self._require("prompt", name, prompt, components.prompt_resource)
        declared = list(prompt.arguments or []) if prompt is not None else []
        given = context.message.arguments or {}
        missing = [
            {"loc": (a.name,), "type": "missing", "msg": "Field required"}
            for a in declared
            if a.required and a.name not in given
        ]
        if missing:
            # FastMCP would log the refusal with two tracebacks; it is an answer, not a failure.
            message = invalid_arguments(f"prompt {name!r}", {a.name for a in declared}, missing)
            raise InvalidParams(message)
        return await call_next(context)

    async def _require(
        self,
        component_type: ComponentType,
        name: str,
        component: C | None,
        to_ref: Callable[[C], ResourceRef],
    ) -> None:
        """Allow using ``component`` or raise "not found". An unregistered name (``component``
        None) is asked about all the same, so it takes the path and the time of a real one."""
        bind_target(name)
        found = component is not None
        ref = (
            to_ref(component)
            if component is not None
            else components.unregistered_resource(component_type, name)
        )
        action = components.USE_ACTION[component_type]
        # The name goes on the server span even for a refusal; an implausible one (it could
        # be anything a client sent) is recorded as "unregistered".
        tracing.mark_request(
            component_type,
            name if components.is_plausible_name(name) else components.UNREGISTERED,
        )
        result = await self._decide([(ref, (action,))], must_allow=(action,))
        decision: ResourceDecision = result.decisions[0]
        if not found:
            tracing.refuse_request("unknown_component")
            raise not_found(component_type, name)
        if not decision.allowed(action):
            tracing.refuse_request(tracing.denial_reason(decision))
            raise not_found(component_type, name)
        tracing.allow_request()

    # --- the one place a decision is made --------------------------------------------------------

    async def _decide(
        self,
        entries: Sequence[tuple[ResourceRef, Sequence[str]]],
        *,
        must_allow: Sequence[str] = (),
    ) -> CheckResult:
        return await self._ask_pdp(entries, must_allow, cacheable=True)

    async def _ask_pdp(
        self,
        entries: Sequence[tuple[ResourceRef, Sequence[str]]],
        must_allow: Sequence[str],
        *,
        cacheable: bool = False,
    ) -> CheckResult:
        info = current_request()
        if info is None or info.principal is None:
            raise McpError(
                code=NOT_AUTHORIZED, message="Not authorized: no principal for this request"
            )
        try:
            # Components only: their decision depends on nothing but what the PDP is sent.
            return await self.pdp.check(
                info.principal,
                entries,
                request_id=info.request_id,
                must_allow=must_allow,
                cacheable=cacheable,
                valid_until=info.valid_until,
            )
        except AuthorizationUnavailable as exc:
            log.warning(
                "authorization unavailable (%s) for request %s", exc.reason, info.request_id
            )
            tracing.refuse_request(exc.reason)
        except Exception:
            # Fail closed on anything unexpected too, but keep the evidence.
            log.exception("authorization failed for request %s", info.request_id)
            tracing.refuse_request("internal_error")
        raise McpError(code=AUTHORIZATION_UNAVAILABLE, message=UNAVAILABLE_MESSAGE)


class InvalidArguments(ExpectedOutcome, ValidationError):
    """Arguments the tool's schema refused, described without echoing them."""

    def __init__(self, message: str) -> None:
        super().__init__(message, log_level=logging.INFO)


def _server(context: MiddlewareContext[Any]) -> Any:
    if context.fastmcp_context is None:
        raise McpError(code=NOT_AUTHORIZED, message="Not authorized: no server context")
    return context.fastmcp_context.fastmcp
