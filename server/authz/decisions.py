"""What the PDP is asked about and what it answers, as plain values.

``ResourceRef`` is one thing to authorize; ``ResourceDecision`` holds the PDP's effect per action
for it, with the matched policy and the policy's outputs. The PDP client produces them, the
middleware, the record checks and the decision spans read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ResourceRef:
    """One thing to authorize: a Cerbos resource kind, id and the attributes policies read."""

    kind: str
    id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ActionDecision:
    action: str
    allowed: bool
    policy: str
    # Policy outputs attached to this action, e.g. obligations. Cerbos returns the outputs of
    # every activated rule, including ALLOW rules whose action ended DENY: act on them only
    # when ``allowed`` is true.
    outputs: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ResourceDecision:
    resource: ResourceRef
    actions: Mapping[str, ActionDecision]
    validation_errors: tuple[str, ...] = ()
    call_id: str = ""  # the PDP call that decided (its decision-log callId)

    def allowed(self, action: str) -> bool:
        decision = self.actions.get(action)
        return decision is not None and decision.allowed


@dataclass(frozen=True)
class CheckResult:
    request_id: str
    call_ids: tuple[str, ...]
    decisions: tuple[ResourceDecision, ...]
