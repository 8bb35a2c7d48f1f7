"""Tracing of authorization decisions: every decision findable, at the least cost per call.

Every PDP request (CheckResources, PlanResources) of the PDP client is recorded by the same
code, so the middleware's component checks and the tools' record checks are traced alike. A
single (resource, action) decided becomes an ``authz.decision`` event with kind, id, action,
effect, matched policy, the PDP's call id and latency and, for a DENY, the reason. Many at once
(a list, a page of records) become one ``authz.decisions`` event per kind and action: the ids
allowed, the ids denied (and those denied for invalid attributes), the matched policies, the
call id and latency: every decision recorded, at the cost of one event. Where the events go:

- by default on the request's own span (FastMCP's server span), which already carries who asked
  (principal id and roles) and the request id the PDP's decision log also records. The PDP's
  spans continue the trace under that span.
- with ``MCP_OTEL_DECISION_SPANS=true``, on one ``authz.check`` / ``authz.plan`` span per PDP
  request, carrying principal, request id, call id and latency itself (a single decision also
  on the span's own attributes), the PDP's spans under it.

A component decision served from the decision cache is an ``authz.decision`` event too, marked
``authz.cached`` and naming the PDP call (``cerbos.call_id``) and request it came from. A PDP
request asked again because its answer matched no policy (a policy reload) carries an
``authz.retry`` event.

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
    from server.authz.decision_cache import CachedDecision
    from server.authz.decisions import ActionDecision, ResourceDecision, ResourceRef
    from server.edge.principal import Principal

log = logging.getLogger(__name__)

_tracer = trace.get_tracer("server.authz")

CHECK_SPAN: Final = "authz.check"
PLAN_SPAN: Final = "authz.plan"
DECISION_EVENT: Final = "authz.decision"
DECISIONS_EVENT: Final = "authz.decisions"  # several (resource, action) decisions at once
PLAN_EVENT: Final = "authz.plan"
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
ALLOWED_IDS: Final = "authz.allowed_ids"
DENIED_IDS: Final = "authz.denied_ids"
INVALID_IDS: Final = "authz.invalid_ids"  # denied because attributes failed the policy schema
POLICIES: Final = "authz.policies"
CACHED: Final = "authz.cached"  # the decision came from the decision cache
CACHE_AGE_MS: Final = "authz.cache.age_ms"  # since the PDP made it
ORIGIN_REQUEST_ID: Final = "authz.cache.request_id"  # the request whose PDP call made it

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


class DecisionRecorder:
    """Records the outcome of one PDP request. This base records nothing (no SDK)."""

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


class DecisionSpan(DecisionRecorder):
    """One span per PDP request (``MCP_OTEL_DECISION_SPANS=true``)."""

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
        effect = _plan_effect(filter_kind)
        self.span.set_attribute(EFFECT, effect)
        if effect == DENY:
            self.span.set_attribute(DENIAL_REASON, "policy_denied")

    def failed(self, reason: DenialReason, detail: str) -> None:
        self.span.set_attribute(EFFECT, DENY)
        self.span.set_attribute(DENIAL_REASON, reason)
        self.span.set_attribute("error.type", reason)
        self.span.set_status(Status(StatusCode.ERROR, f"{reason}: {detail}"[:200]))


class DecisionEvents(DecisionRecorder):
    """The default: each decision an event on the request's span, with the PDP call's id and
    latency. ``subjects`` are what the request asked about, for a failure's events."""

    def __init__(
        self,
        span: trace.Span,
        event: str,
        subjects: Sequence[tuple[ResourceRef, Sequence[str]]],
        started: float,
    ) -> None:
        self.span = span
        self.event = event
        self.subjects = subjects
        self.started = started
        self._call_id = ""

    def _pdp_attributes(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            LATENCY_MS: round((time.perf_counter() - self.started) * 1000, 3)
        }
        if self._call_id:
            attributes[CALL_ID] = self._call_id
        return attributes

    def call_id(self, call_id: str) -> None:
        self._call_id = call_id

    def retried(self, reason: str) -> None:
        self.span.add_event(RETRY_EVENT, {RETRY_REASON: reason, **self._pdp_attributes()})

    def checked(self, decisions: Sequence[ResourceDecision], must_allow: Collection[str]) -> None:
        try:
            _add_decision_events(self.span, decisions, self._pdp_attributes())
        except Exception:
            log.exception("could not record authorization decisions on the span")

    def planned(self, filter_kind: str) -> None:
        try:
            (ref, actions), *_ = self.subjects
            effect = _plan_effect(filter_kind)
            attributes = {
                RESOURCE_KIND: ref.kind,
                ACTION: actions[0],
                PLAN_FILTER: filter_kind,
                EFFECT: effect,
                **self._pdp_attributes(),
            }
            if effect == DENY:
                attributes[DENIAL_REASON] = "policy_denied"
            self.span.add_event(PLAN_EVENT, attributes)
        except Exception:
            log.exception("could not record a query plan on the span")

    def failed(self, reason: DenialReason, detail: str) -> None:
        try:
            pdp = {**self._pdp_attributes(), EFFECT: DENY, DENIAL_REASON: reason}
            asked = [(ref, action) for ref, actions in self.subjects for action in actions]
            if len(asked) == 1 or self.event == PLAN_EVENT:
                for ref, action in asked:
                    attributes = {RESOURCE_KIND: ref.kind, ACTION: action}
                    if ref.id:
                        attributes[RESOURCE_ID] = ref.id
                    self.span.add_event(self.event, {**attributes, **pdp})
                return
            groups: dict[tuple[str, str], list[str]] = {}
            for ref, action in asked:
                groups.setdefault((ref.kind, action), []).append(ref.id)
            for (kind, action), ids in groups.items():
                self.span.add_event(
                    DECISIONS_EVENT,
                    {RESOURCE_KIND: kind, ACTION: action, DENIED_IDS: ids, **pdp},
                )
        except Exception:
            log.exception("could not record a failed authorization on the span")


@contextmanager
def pdp_request(
    name: str,
    principal: Principal,
    request_id: str,
    subjects: Sequence[tuple[ResourceRef, Sequence[str]]],
    describe: Callable[[], Mapping[str, Any]],
    *,
    as_span: bool,
) -> Iterator[DecisionRecorder]:
    """Record one PDP request (``name``: CHECK_SPAN or PLAN_SPAN); a failure inside it is
    recorded with its reason.

    ``subjects`` are the (resource, actions) asked about; ``describe`` gives a decision span's
    own attributes and runs only when that span records.
    """
    started = time.perf_counter()
    if not as_span:
        span = trace.get_current_span()
        if not span.is_recording():
            yield DecisionRecorder()
            return
        event = DECISION_EVENT if name == CHECK_SPAN else PLAN_EVENT
        with _failures_recorded(DecisionEvents(span, event, subjects, started)) as recorder:
            yield recorder
        return
    # Exception messages can quote PDP replies; the reason says what happened.
    span = _tracer.start_span(
        name, kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
    )
    if not span.is_recording():
        # No SDK (MCP_OTEL_EXPORTER=none): skip building attributes and events entirely. The
        # current context still carries the caller's trace, which the PDP continues.
        yield DecisionRecorder()
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
        try:
            with _failures_recorded(DecisionSpan(span)) as recorder:
                yield recorder
        finally:
            span.set_attribute(LATENCY_MS, round((time.perf_counter() - started) * 1000, 3))


@contextmanager
def _failures_recorded(recorder: DecisionRecorder) -> Iterator[DecisionRecorder]:
    """A failure inside the PDP request is recorded with its reason, then propagates."""
    try:
        yield recorder
    except AuthorizationUnavailable as exc:
        recorder.failed(exc.reason, exc.detail)
        raise
    except Exception as exc:
        recorder.failed("internal_error", type(exc).__name__)
        raise


def cached_decisions(hits: Sequence[CachedDecision], now: float) -> None:
    """Decisions served from the cache, as events on the request's span: each names the PDP
    call and the request it came from."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    try:
        # One event per PDP call the hits came from (a cached list: usually one).
        by_origin: dict[tuple[str, str], list[CachedDecision]] = {}
        for hit in hits:
            by_origin.setdefault((hit.decision.call_id, hit.request_id), []).append(hit)
        for (call_id, request_id), group in by_origin.items():
            origin: dict[str, Any] = {
                CACHED: True,
                CACHE_AGE_MS: min(hit.age_ms(now) for hit in group),
                ORIGIN_REQUEST_ID: request_id,
            }
            if call_id:
                origin[CALL_ID] = call_id
            _add_decision_events(span, [hit.decision for hit in group], origin)
    except Exception:
        log.exception("could not record cached authorization decisions on the span")


def _add_decision_events(
    span: trace.Span, decisions: Sequence[ResourceDecision], common: Mapping[str, Any]
) -> None:
    """One ``authz.decision`` event for a single decision; for several, one ``authz.decisions``
    event per (kind, action) naming the ids allowed and denied."""
    outcomes = [(d, a) for d in decisions for a in d.actions.values()]
    if len(outcomes) == 1:
        decision, action = outcomes[0]
        span.add_event(DECISION_EVENT, {**_decision_attributes(decision, action), **common})
        return
    groups: dict[tuple[str, str], list[tuple[ResourceDecision, ActionDecision]]] = {}
    for decision, action in outcomes:
        groups.setdefault((decision.resource.kind, action.action), []).append((decision, action))
    for (kind, action_name), group in groups.items():
        allowed = [d.resource.id for d, a in group if a.allowed]
        denied = [d.resource.id for d, a in group if not a.allowed]
        attributes: dict[str, Any] = {
            RESOURCE_KIND: kind,
            ACTION: action_name,
            ALLOWED_IDS: allowed,
            DENIED_IDS: denied,
            ALLOWED_COUNT: len(allowed),
            DENIED_COUNT: len(denied),
            POLICIES: sorted({a.policy for _, a in group}),
        }
        invalid = [d.resource.id for d, a in group if not a.allowed and d.validation_errors]
        if invalid:
            attributes[INVALID_IDS] = invalid
        span.add_event(DECISIONS_EVENT, {**attributes, **common})


def list_outcome(allowed: int, denied: int) -> None:
    """How many listed components the caller may see, on the request's span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({ALLOWED_COUNT: allowed, DENIED_COUNT: denied})


def _plan_effect(filter_kind: str) -> str:
    return {"ALWAYS_ALLOWED": ALLOW, "ALWAYS_DENIED": DENY}.get(filter_kind, "CONDITIONAL")


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
        span.set_attributes(
            {
                REQUEST_ID: request_id,
                PRINCIPAL_ID: principal.id,
                PRINCIPAL_ROLES: list(principal.roles),
            }
        )


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
