"""Spans for authorization decisions: one per decision, every decision in it findable.

``decision_span`` wraps each CheckResources and PlanResources decision of the PDP client (one
RPC, or two when an answer that matched no policy is asked again: an ``authz.retry`` event), so the
middleware's component checks and the tools' record checks are traced by the same code. A span
carries who asked (principal id and roles), the request id the PDP's decision log also records,
the PDP's call id, the latency, and for each (resource, action) an ``authz.decision`` event with
kind, id, action, effect, matched policy and, for a DENY, the reason. A single decision is also
on the span's own attributes, so the common case needs no event search.

``mark_request`` and ``refuse_request`` put what only the middleware knows on FastMCP's server
span: the component named in the request, and the reason it was refused (FastMCP leaves a
refused call named plain ``tools/call`` with an UNSET status).

Never recorded: principal or resource *attributes* (they can hold personal data), tool
arguments, tokens. Recording never raises into the decision path: a telemetry bug must not turn
into a denial, let alone an allow.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from server.authz.errors import AuthorizationUnavailable

if TYPE_CHECKING:
    from server.authz.decisions import ActionDecision, ResourceDecision
    from server.edge.principal import Principal

log = logging.getLogger(__name__)

_tracer = trace.get_tracer("server.authz")

CHECK_SPAN: Final = "authz.check"
PLAN_SPAN: Final = "authz.plan"
DECISION_EVENT: Final = "authz.decision"
RETRY_EVENT: Final = "authz.retry"
RETRY_REASON: Final = "authz.retry.reason"

# Attribute names, on decision spans, their events and (some) on FastMCP's server span.
PRINCIPAL_ID: Final = "authz.principal.id"
PRINCIPAL_ROLES: Final = "authz.principal.roles"
REQUEST_ID: Final = "authz.request_id"  # = x-request-id metadata in the PDP decision log
CALL_ID: Final = "cerbos.call_id"  # = callId of the PDP decision log entry
RESOURCE_KIND: Final = "authz.resource.kind"
RESOURCE_ID: Final = "authz.resource.id"
RESOURCE_COUNT: Final = "authz.resource.count"
ACTION: Final = "authz.action"
ACTIONS: Final = "authz.actions"
EFFECT: Final = "authz.effect"  # ALLOW | DENY (plans: also CONDITIONAL)
POLICY: Final = "authz.policy"  # matched policy, NO_MATCH when none
DENIAL_REASON: Final = "authz.denial_reason"
POLICY_REASON: Final = "authz.policy_reason"  # a DENY rule's own `reason` output, if any
ALLOWED_COUNT: Final = "authz.allowed_count"
DENIED_COUNT: Final = "authz.denied_count"
PLAN_FILTER: Final = "authz.plan.filter"
LATENCY_MS: Final = "authz.pdp.latency_ms"

ALLOW: Final = "ALLOW"
DENY: Final = "DENY"

DenialReason = Literal[
    "policy_denied",  # a policy said DENY (or no policy matched)
    "invalid_attributes",  # DENY because attributes failed the policy schema
    "unknown_component",  # the request named a component that is not registered
    "pdp_unavailable",
    "pdp_timeout",
    "invalid_reply",
    "invalid_request",
    "internal_error",  # anything unexpected on the decision path (still a denial)
    # refused by the middleware before any decision:
    "unknown_method",
    "no_principal",
    # refused at the HTTP edge (server/edge/ratelimit.py), before any MCP work:
    "rate_limited",
]

_POLICY_REASON_SHAPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class DecisionSpan:
    """Records the outcome of one PDP request on its span."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def call_id(self, call_id: str) -> None:
        if call_id:
            self.span.set_attribute(CALL_ID, call_id)

    def checked(self, decisions: Sequence[ResourceDecision], must_allow: Collection[str]) -> None:
        """One event per (resource, action); a DENY of a ``must_allow`` action is an error."""
        try:
            self._checked(decisions, must_allow)
        except Exception:
            log.exception("could not record authorization decisions on the span")

    def _checked(self, decisions: Sequence[ResourceDecision], must_allow: Collection[str]) -> None:
        span = self.span
        outcomes = [(d, a) for d in decisions for a in d.actions.values()]
        denied = [(d, a) for d, a in outcomes if not a.allowed]
        span.set_attribute(ALLOWED_COUNT, len(outcomes) - len(denied))
        span.set_attribute(DENIED_COUNT, len(denied))
        for decision, action in outcomes:
            span.add_event(DECISION_EVENT, _decision_attributes(decision, action))
        if len(decisions) == 1:
            span.set_attribute(RESOURCE_ID, decisions[0].resource.id)
        if len(outcomes) == 1:
            decision, action = outcomes[0]
            span.set_attributes(_decision_attributes(decision, action))
        refused = [(d, a) for d, a in denied if a.action in must_allow]
        if refused:
            decision, action = refused[0]
            span.set_attribute(EFFECT, DENY)
            span.set_attribute(DENIAL_REASON, denial_reason(decision))
            span.set_status(
                Status(
                    StatusCode.ERROR,
                    f"denied: {action.action} on {decision.resource.kind} {decision.resource.id}",
                )
            )
        elif must_allow:
            span.set_attribute(EFFECT, ALLOW)

    def retried(self, reason: str) -> None:
        """The PDP was asked again (its first answer matched no policy: a reload)."""
        self.span.add_event(RETRY_EVENT, {RETRY_REASON: reason})

    def planned(self, filter_kind: str) -> None:
        """A PlanResources answer: ALWAYS_ALLOWED, ALWAYS_DENIED or CONDITIONAL."""
        self.span.set_attribute(PLAN_FILTER, filter_kind)
        effect = {"ALWAYS_ALLOWED": ALLOW, "ALWAYS_DENIED": DENY}.get(filter_kind, "CONDITIONAL")
        self.span.set_attribute(EFFECT, effect)
        if effect == DENY:
            self.span.set_attribute(DENIAL_REASON, "policy_denied")

    def failed(self, reason: DenialReason, detail: str) -> None:
        self.span.set_attribute(EFFECT, DENY)
        self.span.set_attribute(DENIAL_REASON, reason)
        self.span.set_attribute("error.type", reason)
        self.span.set_status(Status(StatusCode.ERROR, f"{reason}: {detail}"[:200]))


class _NotRecording(DecisionSpan):
    """Where no SDK records spans: every recording call is a no-op, so nothing is computed."""

    def call_id(self, call_id: str) -> None:
        pass

    def checked(self, decisions: Sequence[ResourceDecision], must_allow: Collection[str]) -> None:
        pass

    def planned(self, filter_kind: str) -> None:
        pass

    def retried(self, reason: str) -> None:
        pass

    def failed(self, reason: DenialReason, detail: str) -> None:
        pass


@contextmanager
def decision_span(
    name: str,
    principal: Principal,
    request_id: str,
    describe: Callable[[], Mapping[str, Any]],
) -> Iterator[DecisionSpan]:
    """The span of one PDP request; a failure inside it is recorded with its reason.

    ``describe`` gives the request's own attributes; it runs only when the span records.
    """
    started = time.perf_counter()
    # Exception messages can quote PDP replies; the reason says what happened.
    span = _tracer.start_span(
        name, kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
    )
    if not span.is_recording():
        # No SDK (MCP_OTEL_EXPORTER=none): skip building attributes and events entirely. The
        # current context still carries the caller's trace, which the PDP continues.
        yield _NotRecording(span)
        return
    span.set_attributes(
        {
            PRINCIPAL_ID: principal.id,
            PRINCIPAL_ROLES: list(principal.roles),
            REQUEST_ID: request_id,
            **describe(),
        }
    )
    with trace.use_span(
        span, end_on_exit=True, record_exception=False, set_status_on_exception=False
    ):
        recorder = DecisionSpan(span)
        try:
            yield recorder
        except AuthorizationUnavailable as exc:
            recorder.failed(exc.reason, exc.detail)
            raise
        except Exception as exc:
            recorder.failed("internal_error", type(exc).__name__)
            raise
        finally:
            span.set_attribute(LATENCY_MS, round((time.perf_counter() - started) * 1000, 3))


def check_attributes(entries: Sequence[tuple[Any, Sequence[str]]]) -> dict[str, Any]:
    """Span attributes describing a CheckResources request before it is sent."""
    kinds = sorted({ref.kind for ref, _ in entries})
    actions = sorted({action for _, acts in entries for action in acts})
    attributes: dict[str, Any] = {RESOURCE_COUNT: len(entries), ACTIONS: actions}
    if len(kinds) == 1:
        attributes[RESOURCE_KIND] = kinds[0]
    return attributes


def _decision_attributes(decision: ResourceDecision, action: ActionDecision) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        RESOURCE_KIND: decision.resource.kind,
        RESOURCE_ID: decision.resource.id,
        ACTION: action.action,
        EFFECT: ALLOW if action.allowed else DENY,
        POLICY: action.policy,
    }
    if not action.allowed:
        attributes[DENIAL_REASON] = denial_reason(decision)
        reason = _policy_reason(action)
        if reason:
            attributes[POLICY_REASON] = reason
    return attributes


def denial_reason(decision: ResourceDecision) -> DenialReason:
    """Why a policy DENY happened, as far as the PDP's answer says."""
    return "invalid_attributes" if decision.validation_errors else "policy_denied"


def _policy_reason(action: ActionDecision) -> str | None:
    """The ``reason`` a DENY rule outputs (e.g. ``mfa_required``), if it is a plain identifier."""
    for output in action.outputs:
        if isinstance(output, Mapping):
            reason = output.get("reason")
            if isinstance(reason, str) and _POLICY_REASON_SHAPE.match(reason):
                return reason
    return None


# --- FastMCP's server span ------------------------------------------------------------------------

ComponentType = Literal["tool", "resource", "prompt"]
_USE_METHOD: Final[dict[ComponentType, str]] = {
    "tool": "tools/call",
    "resource": "resources/read",
    "prompt": "prompts/get",
}
_NAME_ATTRIBUTE: Final[dict[ComponentType, str]] = {
    "tool": "gen_ai.tool.name",
    "resource": "mcp.resource.uri",
    "prompt": "gen_ai.prompt.name",
}


def tag_request(request_id: str, principal: Principal) -> None:
    """Who is asking, and the request id shared with the PDP's log, on the server span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({REQUEST_ID: request_id, PRINCIPAL_ID: principal.id})


def mark_request(component_type: ComponentType, name: str) -> None:
    """Name the server span after the component asked for, as FastMCP does for served calls.

    ``name`` must already be safe to record (a registered name or a sanitized one).
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    if component_type != "resource":  # FastMCP names reads plain "resources/read"
        span.update_name(f"{_USE_METHOD[component_type]} {name}")
    span.set_attribute(_NAME_ATTRIBUTE[component_type], name)


def allow_request() -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(EFFECT, ALLOW)


def refuse_request(reason: DenialReason, principal: Principal | str | None = None) -> None:
    """The request is refused: ERROR status and the reason on the server span (at the HTTP
    edge: on the HTTP span, when the request carried a ``traceparent`` header)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({EFFECT: DENY, DENIAL_REASON: reason})
        if principal is not None:
            span.set_attribute(
                PRINCIPAL_ID, principal if isinstance(principal, str) else principal.id
            )
        span.set_status(Status(StatusCode.ERROR, f"authorization denied: {reason}"))
