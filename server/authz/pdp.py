"""Client of the Cerbos policy decision point (PDP), built to fail closed.

Uses the cerbos SDK's protobuf messages and gRPC stub on a channel of our own, because the SDK's
async client offers neither per-call deadlines (its ``timeout_secs`` goes through a gRPC service
config that fires early) nor per-call metadata (needed to tag the PDP's audit log with our
request id). Every answer is checked for shape before it is believed: a reply that does not
describe exactly the resources and actions we asked about is treated as an outage, never as an
ALLOW.

Every decision is traced (``server.authz.tracing``): events on the request's span, or one
``authz.check`` / ``authz.plan`` span per decision. Every RPC carries the trace context (W3C
``traceparent``) as gRPC metadata, so the PDP's own spans continue the trace.

Component decisions (the tool gate, lists) may be served from a short-lived ``DecisionCache``
when the caller asks for it (``cacheable``): never while the channel is not ready, and every
entry is dropped when a PDP request fails. Record-level decisions and query plans are never
cached.

Policy hot reloads: while the PDP swaps in edited policies it can, for milliseconds (longer on a
busy host), find no policy at all for a kind whose derived roles changed, and answers DENY with
no matched policy (``NO_MATCH``), or an ALWAYS_DENIED plan. Every kind this server asks about has
a policy, so such an answer is asked again, after ``RELOAD_PAUSE_SECONDS`` and then twice as long
each time, as long as a quarter of the deadline would be left; the last answer stands, whatever
it is (a retry never turns a refusal into an ALLOW by itself: the PDP decides again). Past the
deadline nothing is retried: a PDP that stalls longer than the deadline while it recompiles (it
can, on a busy host) gives "Authorization unavailable".
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

import grpc
from cerbos.effect.v1 import effect_pb2
from cerbos.engine.v1 import engine_pb2
from cerbos.request.v1 import request_pb2
from cerbos.response.v1 import response_pb2
from cerbos.svc.v1 import svc_pb2_grpc
from google.protobuf import json_format, struct_pb2
from opentelemetry import propagate

from server.authz import tracing
from server.authz.decision_cache import CachedDecision, DecisionCache
from server.authz.decisions import ActionDecision, CheckResult, ResourceDecision, ResourceRef
from server.authz.errors import AuthorizationUnavailable
from server.edge.principal import Principal

log = logging.getLogger(__name__)

# Reconnect quickly after a PDP restart: gRPC's default backoff grows to two minutes, which
# would keep every request denied long after the PDP is back.
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]


# How long to wait before asking again about an answer that matched no policy (a reload swaps
# policies within milliseconds).
RELOAD_PAUSE_SECONDS: Final = 0.05
NO_MATCH: Final = "NO_MATCH"

_KNOWN_FILTER_KINDS = frozenset(
    {
        engine_pb2.PlanResourcesFilter.KIND_ALWAYS_ALLOWED,
        engine_pb2.PlanResourcesFilter.KIND_ALWAYS_DENIED,
        engine_pb2.PlanResourcesFilter.KIND_CONDITIONAL,
    }
)


class PolicyDecisionPoint:
    """Asks the PDP; owns one gRPC channel, created inside the running event loop."""

    def __init__(
        self,
        address: str,
        *,
        timeout_seconds: float,
        max_resources_per_request: int,
        tls_ca: bytes | None = None,
        cache: DecisionCache | None = None,
        decision_spans: bool = False,
    ) -> None:
        self.address = address
        self.timeout_seconds = timeout_seconds
        self.max_resources_per_request = max_resources_per_request
        self._tls_ca = tls_ca
        self.cache = cache if cache is not None and cache.enabled else None
        self.decision_spans = decision_spans
        self._channel: grpc.aio.Channel | None = None
        self._stub: svc_pb2_grpc.CerbosServiceStub | None = None

    async def start(self) -> None:
        """Open the channel. Must run inside the loop that will use it (grpc.aio binds to it)."""
        if self._tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self._tls_ca)
            self._channel = grpc.aio.secure_channel(self.address, creds, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
        self._stub = svc_pb2_grpc.CerbosServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None
        if self.cache is not None:
            self.cache.flush()

    def ready(self) -> bool:
        """Whether the channel is connected right now (no RPC, no connection attempt)."""
        channel = self._channel
        return (
            channel is not None
            and channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY
        )

    async def serving(self) -> bool:
        """Whether the PDP answers its gRPC health check as SERVING within the deadline.

        The request (an empty ``HealthCheckRequest``) and the SERVING reply (``status: 1``) are
        encoded by hand: a readiness probe needs no extra dependency.
        """
        if self._channel is None:
            return False
        check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        try:
            reply = await check(b"", timeout=self.timeout_seconds)
        except grpc.RpcError:
            return False
        return bool(reply == b"\x08\x01")

    async def check(
        self,
        principal: Principal,
        entries: Sequence[tuple[ResourceRef, Sequence[str]]],
        *,
        request_id: str,
        must_allow: Collection[str] = (),
        cacheable: bool = False,
        valid_until: float | None = None,
    ) -> CheckResult:
        """Decide every (resource, actions) entry; chunked at the PDP's per-request limit.

        ``must_allow`` names the actions whose DENY refuses the caller's request (empty for a
        list being filtered); such a denial marks a decision span as an error.

        ``cacheable``: the entries are components (their decision depends only on what the PDP
        is sent), so decisions may come from, and go to, the decision cache; never beyond
        ``valid_until`` (epoch seconds: the expiry of the caller's token).

        Raises ``AuthorizationUnavailable`` for any outage, timeout or malformed reply.
        """
        if not entries:
            return CheckResult(request_id=request_id, call_ids=(), decisions=())
        if cacheable and self.cache is not None:
            return await self._check_cached(
                self.cache, principal, entries, request_id, must_allow, valid_until
            )
        return await self._check(principal, entries, request_id, must_allow)

    async def _check_cached(
        self,
        cache: DecisionCache,
        principal: Principal,
        entries: Sequence[tuple[ResourceRef, Sequence[str]]],
        request_id: str,
        must_allow: Collection[str],
        valid_until: float | None,
    ) -> CheckResult:
        asked = time.monotonic()
        keys = [cache.key(principal, ref, actions) for ref, actions in entries]
        # Nothing is read while the channel is down (or not yet up): the PDP answers, or denies.
        found: list[CachedDecision | None] = (
            [cache.get(key, asked) for key in keys] if self.ready() else [None] * len(keys)
        )
        hits = [entry for entry in found if entry is not None]
        if hits:
            tracing.cached_decisions(hits, asked)
        decisions = [entry.decision if entry is not None else None for entry in found]
        missing = [i for i, entry in enumerate(found) if entry is None]
        call_ids: tuple[str, ...] = ()
        if missing:
            result = await self._check(
                principal, [entries[i] for i in missing], request_id, must_allow
            )
            call_ids = result.call_ids
            for i, decision in zip(missing, result.decisions, strict=True):
                decisions[i] = decision
                # Counted from before the question: an entry errs on the early side.
                cache.put(
                    keys[i], decision, request_id=request_id, now=asked, valid_until=valid_until
                )
        return CheckResult(
            request_id=request_id,
            call_ids=call_ids,
            decisions=tuple(d for d in decisions if d is not None),
        )

    async def _check(
        self,
        principal: Principal,
        entries: Sequence[tuple[ResourceRef, Sequence[str]]],
        request_id: str,
        must_allow: Collection[str],
    ) -> CheckResult:
        size = self.max_resources_per_request
        try:
            if len(entries) <= size:  # the common case: no task scheduling for a single RPC
                replies = [await self._check_chunk(principal, entries, request_id, must_allow)]
            else:
                chunks = [entries[i : i + size] for i in range(0, len(entries), size)]
                replies = await asyncio.gather(
                    *(
                        self._check_chunk(principal, chunk, request_id, must_allow)
                        for chunk in chunks
                    )
                )
        except Exception:
            self._distrust()
            raise
        return CheckResult(
            request_id=request_id,
            call_ids=tuple(call_id for call_id, _ in replies),
            decisions=tuple(d for _, decisions in replies for d in decisions),
        )

    async def _check_chunk(
        self,
        principal: Principal,
        entries: Sequence[tuple[ResourceRef, Sequence[str]]],
        request_id: str,
        must_allow: Collection[str],
    ) -> tuple[str, list[ResourceDecision]]:
        with tracing.pdp_request(
            tracing.CHECK_SPAN,
            principal,
            request_id,
            entries,
            lambda: tracing.check_attributes(entries),
            as_span=self.decision_spans,
        ) as span:
            request = request_pb2.CheckResourcesRequest(
                request_id=request_id,
                include_meta=True,
                principal=_principal_message(principal),
                resources=[
                    request_pb2.CheckResourcesRequest.ResourceEntry(
                        actions=list(actions), resource=_resource_message(ref)
                    )
                    for ref, actions in entries
                ],
            )
            deadline = asyncio.get_running_loop().time() + self.timeout_seconds
            reply, decisions = await self._check_once(request, entries, request_id, deadline)
            pause = RELOAD_PAUSE_SECONDS
            while _unmatched(decisions) and self._time_for_retry(deadline, pause):
                span.retried(NO_MATCH)
                await asyncio.sleep(pause)
                pause *= 2
                reply, decisions = await self._check_once(request, entries, request_id, deadline)
            if _unmatched(decisions):
                log.warning(
                    "no policy matched %s for request %s: a policy reload, or a missing policy",
                    sorted({d.resource.kind for d in decisions if _unmatched([d])}),
                    request_id,
                )
            span.call_id(reply.cerbos_call_id)
            span.checked(decisions, must_allow)
            return reply.cerbos_call_id, decisions

    async def _check_once(
        self,
        request: request_pb2.CheckResourcesRequest,
        entries: Sequence[tuple[ResourceRef, Sequence[str]]],
        request_id: str,
        deadline: float,
    ) -> tuple[response_pb2.CheckResourcesResponse, list[ResourceDecision]]:
        reply = await self._call("CheckResources", request, request_id, deadline)
        if not isinstance(reply, response_pb2.CheckResourcesResponse):
            raise AuthorizationUnavailable("invalid_reply", "unexpected message type")
        return reply, _read_results(reply, entries)

    def _time_for_retry(self, deadline: float, pause: float) -> bool:
        """Whether a retry after ``pause`` still has a useful share of the deadline left."""
        left = deadline - asyncio.get_running_loop().time() - pause
        return left > self.timeout_seconds / 4

    async def plan(
        self, principal: Principal, kind: str, action: str, *, request_id: str
    ) -> response_pb2.PlanResourcesResponse:
        """Ask which resources of ``kind`` the principal may ``action``: a query plan.

        Raises ``AuthorizationUnavailable`` unless the reply is a plan for exactly that kind
        and action with a known filter kind.
        """
        try:
            return await self._plan(principal, kind, action, request_id)
        except Exception:
            self._distrust()
            raise

    async def _plan(
        self, principal: Principal, kind: str, action: str, request_id: str
    ) -> response_pb2.PlanResourcesResponse:
        with tracing.pdp_request(
            tracing.PLAN_SPAN,
            principal,
            request_id,
            [(ResourceRef(kind, ""), (action,))],
            lambda: {tracing.RESOURCE_KIND: kind, tracing.ACTION: action},
            as_span=self.decision_spans,
        ) as span:
            request = request_pb2.PlanResourcesRequest(
                request_id=request_id,
                action=action,
                principal=_principal_message(principal),
                resource=engine_pb2.PlanResourcesInput.Resource(kind=kind),
                include_meta=True,
            )
            deadline = asyncio.get_running_loop().time() + self.timeout_seconds
            reply = await self._plan_once(request, request_id, deadline)
            # The PDP says NO_MATCH for a plan both when no policy exists (a reload) and when no
            # rule of the policy applies to the principal: ask again in both cases (the second
            # only costs a refused caller a pause).
            pause = RELOAD_PAUSE_SECONDS
            while _unmatched_plan(reply) and self._time_for_retry(deadline, pause):
                span.retried(NO_MATCH)
                await asyncio.sleep(pause)
                pause *= 2
                reply = await self._plan_once(request, request_id, deadline)
            span.call_id(reply.cerbos_call_id)
            if reply.resource_kind != kind or reply.action != action:
                raise AuthorizationUnavailable("invalid_reply", "plan does not match the request")
            if reply.filter.kind not in _KNOWN_FILTER_KINDS:
                raise AuthorizationUnavailable("invalid_reply", "plan has no usable filter")
            kind_name = engine_pb2.PlanResourcesFilter.Kind.Name(reply.filter.kind)
            span.planned(kind_name.removeprefix("KIND_"))
            return reply

    def _distrust(self) -> None:
        """A PDP request failed: cached answers of this PDP are no longer to be trusted."""
        if self.cache is not None:
            self.cache.flush()

    async def _plan_once(
        self, request: request_pb2.PlanResourcesRequest, request_id: str, deadline: float
    ) -> response_pb2.PlanResourcesResponse:
        reply = await self._call("PlanResources", request, request_id, deadline)
        if not isinstance(reply, response_pb2.PlanResourcesResponse):
            raise AuthorizationUnavailable("invalid_reply", "unexpected message type")
        return reply

    async def _call(self, method: str, request: Any, request_id: str, deadline: float) -> Any:
        if self._stub is None:
            raise AuthorizationUnavailable("pdp_unavailable", "PDP client not started")
        rpc = getattr(self._stub, method)
        timeout = deadline - asyncio.get_running_loop().time()
        if timeout <= 0:
            raise AuthorizationUnavailable("pdp_timeout", "no time left before the deadline")
        try:
            # A per-call deadline is exact (unlike a service-config timeout) and is propagated
            # to the PDP, which abandons work nobody waits for.
            return await rpc(request, timeout=timeout, metadata=_metadata(request_id))
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise AuthorizationUnavailable(
                    "pdp_timeout", "no answer before the deadline"
                ) from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise AuthorizationUnavailable("invalid_request", exc.details() or "") from None
            raise AuthorizationUnavailable("pdp_unavailable", code.name) from None


def _metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    """The request id for the PDP's decision log, and the current trace context (the decision
    span's, or the caller's when nothing records) for the PDP's spans."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (("x-request-id", request_id), *carrier.items())


@functools.lru_cache(maxsize=4096)
def _principal_message(principal: Principal) -> engine_pb2.Principal:
    # Principals are immutable and few: build each one's message once.
    return engine_pb2.Principal(
        id=principal.id,
        roles=list(principal.roles),
        attr=_attribute_values(principal.policy_attributes()),
    )


def _resource_message(ref: ResourceRef) -> engine_pb2.Resource:
    return engine_pb2.Resource(kind=ref.kind, id=ref.id, attr=_attribute_values(ref.attributes))


def _attribute_values(attributes: Mapping[str, Any]) -> dict[str, struct_pb2.Value]:
    return {key: _value(value) for key, value in attributes.items()}


def _value(value: Any) -> struct_pb2.Value:
    """A JSON-like Python value as a protobuf Value (json_format.ParseDict is ~10x slower)."""
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return struct_pb2.Value(number_value=value)
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    if value is None:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, list | tuple):
        return struct_pb2.Value(list_value=struct_pb2.ListValue(values=[_value(v) for v in value]))
    if isinstance(value, Mapping):
        return struct_pb2.Value(
            struct_value=struct_pb2.Struct(fields={str(k): _value(v) for k, v in value.items()})
        )
    raise TypeError(f"attribute value of type {type(value).__name__} cannot be sent to the PDP")


def _unmatched(decisions: Sequence[ResourceDecision]) -> bool:
    """Whether any answer matched no policy at all (its kind has none at the PDP right now)."""
    return any(a.policy == NO_MATCH for d in decisions for a in d.actions.values())


def _unmatched_plan(reply: response_pb2.PlanResourcesResponse) -> bool:
    return bool(
        reply.filter.kind == engine_pb2.PlanResourcesFilter.KIND_ALWAYS_DENIED
        and reply.meta.filter_debug == NO_MATCH
    )


def _read_results(
    reply: response_pb2.CheckResourcesResponse,
    entries: Sequence[tuple[ResourceRef, Sequence[str]]],
) -> list[ResourceDecision]:
    """Turn a reply into decisions, refusing any reply that does not match the request."""
    if len(reply.results) != len(entries):
        raise AuthorizationUnavailable(
            "invalid_reply", f"{len(reply.results)} results for {len(entries)} resources"
        )
    decisions = []
    for result, (ref, actions) in zip(reply.results, entries, strict=True):
        if result.resource.id != ref.id or result.resource.kind != ref.kind:
            raise AuthorizationUnavailable("invalid_reply", "result does not match the request")
        per_action = {}
        for action in actions:
            if action not in result.actions:
                raise AuthorizationUnavailable("invalid_reply", "an action has no decision")
            meta = result.meta.actions.get(action)
            per_action[action] = ActionDecision(
                action=action,
                allowed=result.actions[action] == effect_pb2.EFFECT_ALLOW,
                policy=meta.matched_policy
                if meta is not None and meta.matched_policy
                else NO_MATCH,
                outputs=tuple(
                    json_format.MessageToDict(out.val)
                    for out in result.outputs
                    if out.action == action
                ),
            )
        decisions.append(
            ResourceDecision(
                resource=ref,
                actions=per_action,
                validation_errors=tuple(
                    f"{err.path}: {err.message}" for err in result.validation_errors
                ),
                call_id=reply.cerbos_call_id,
            )
        )
    return decisions
