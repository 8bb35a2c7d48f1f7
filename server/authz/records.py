"""Record-level authorization for tools: "may alice update *this* ticket", "which tickets may she
see", and the obligations a policy attaches to an ALLOW.

Tools get a ``RecordAccess`` by injection. It asks the same PDP client as the middleware, for the
principal the middleware admitted, under the same request id. Three rules hold everywhere:

- a record the caller may not *view* is reported exactly like a record that does not exist;
- any PDP problem denies (``Authorization unavailable``), and nothing has been written;
- obligations (e.g. ``requires_confirmation``) are read only from an action that ended ALLOW:
  Cerbos also returns outputs of ALLOW rules that a DENY overrode.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cerbos_sqlalchemy import get_query
from fastmcp.exceptions import ToolError
from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute

from server.authz.decisions import ActionDecision, ResourceDecision, ResourceRef
from server.authz.errors import UNAVAILABLE_MESSAGE, AuthorizationUnavailable
from server.authz.pdp import PolicyDecisionPoint
from server.edge.principal import Principal

log = logging.getLogger(__name__)

VIEW: Final = "view"
# Why a DENY happened, in words for the caller, keyed by the `reason` a DENY rule outputs.
REASONS: Final = {"mfa_required": "this needs a session with multi-factor authentication (MFA)"}


class NotPermitted(ToolError):
    """The caller may see the record but not do this to it."""


@dataclass(frozen=True)
class Obligations:
    requires_confirmation: bool = False
    reason: str = ""


def obligations(decision: ActionDecision) -> Obligations:
    """What the policy asks for before an allowed action runs. Nothing, for a denied one."""
    if not decision.allowed:
        return Obligations()
    confirm = False
    reasons = []
    for output in decision.outputs:
        if isinstance(output, Mapping) and output.get("requires_confirmation") is True:
            confirm = True
            if isinstance(output.get("reason"), str):
                reasons.append(output["reason"])
    return Obligations(requires_confirmation=confirm, reason="; ".join(reasons))


def denial_reason(decision: ActionDecision) -> str:
    for output in decision.outputs:
        if isinstance(output, Mapping) and output.get("reason") in REASONS:
            return REASONS[output["reason"]]
    return "the policy does not allow it"


class RecordAccess:
    """Record-level decisions for one request's principal."""

    def __init__(self, pdp: PolicyDecisionPoint, principal: Principal, request_id: str) -> None:
        self.pdp = pdp
        self.principal = principal
        self.request_id = request_id

    async def decide(
        self,
        refs: Sequence[ResourceRef],
        actions: Sequence[str],
        *,
        must_allow: Sequence[str] = (),
    ) -> list[ResourceDecision]:
        """One batched PDP call for every (record, action); raises ToolError if unavailable.

        ``must_allow``: the actions whose DENY refuses the request (traced as a denial);
        leave empty when the answer only filters or masks.
        """
        try:
            result = await self.pdp.check(
                self.principal,
                [(ref, tuple(actions)) for ref in refs],
                request_id=self.request_id,
                must_allow=must_allow,
            )
        except AuthorizationUnavailable as exc:
            log.warning(
                "record authorization unavailable (%s) for request %s", exc.reason, self.request_id
            )
            raise ToolError(UNAVAILABLE_MESSAGE) from None
        except Exception:
            log.exception("record authorization failed for request %s", self.request_id)
            raise ToolError(UNAVAILABLE_MESSAGE) from None
        return list(result.decisions)

    async def require(
        self,
        ref: ResourceRef,
        action: str,
        *,
        not_found: Exception,
        doing: str,
        also: Sequence[str] = (),
    ) -> ResourceDecision:
        """Allow ``action`` on the record or raise; decide the ``also`` actions in the same call.

        Asks for ``view`` and ``action`` together: a caller who may not view the record gets
        ``not_found`` (the same error as a missing record); one who may view it but not act gets
        ``NotPermitted`` saying why. ``doing`` describes the action for that message.
        """
        actions = tuple(dict.fromkeys((VIEW, action, *also)))
        (decision,) = await self.decide([ref], actions, must_allow=(VIEW, action))
        if not decision.allowed(VIEW):
            raise not_found
        outcome = decision.actions[action]
        if not outcome.allowed:
            raise NotPermitted(
                f"You may not {doing}: {denial_reason(outcome)}. Nothing was changed."
            )
        return decision

    async def query(
        self,
        model: Any,
        kind: str,
        action: str,
        attributes: Mapping[str, InstrumentedAttribute[Any]],
    ) -> Select[Any]:
        """``SELECT model WHERE <principal may action it>``: one PlanResources, no per-row checks.

        ``kind`` is the policy's resource kind; ``attributes`` maps each policy attribute name
        to the column that stores it.
        """
        try:
            plan = await self.pdp.plan(self.principal, kind, action, request_id=self.request_id)
            attr_map = {
                f"request.resource.attr.{name}": column for name, column in attributes.items()
            }
            query: Select[Any] = get_query(plan, model, attr_map)
            return query
        except AuthorizationUnavailable as exc:
            log.warning("query plan unavailable (%s) for request %s", exc.reason, self.request_id)
        except Exception:
            # An operator or attribute the translator does not know: never fall back to "all rows".
            log.exception("query plan could not be applied for request %s", self.request_id)
        raise ToolError(UNAVAILABLE_MESSAGE)
