"""Record-level authorization for tools: "may alice update *this* ticket", "which tickets may she
see", and the obligations a policy attaches to an ALLOW.

Tools get a ``RecordAccess`` by injection. It asks the same PDP client as the middleware, for the
principal the middleware admitted, under the same request id. Four rules hold everywhere:

- a record the caller may not *view* is reported exactly like a record that does not exist, and
  both take the same path: a missing record is still asked about, as its kind's fixed
  ``placeholder`` (``RecordPolicy``), so "forbidden" and "missing" cost the same PDP request,
  the same database work and the same answer (no existence oracle, by content or by timing);
- an id that cannot name a record (``ticket://1e3``, full-width digits, beyond the id range) is a
  missing record, never an internal error;
- any PDP problem denies (``Authorization unavailable``), and nothing has been written;
- obligations (e.g. ``requires_confirmation``) are read only from an action that ended ALLOW:
  Cerbos also returns outputs of ALLOW rules that a DENY overrode.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Generic, TypeVar

from cerbos_sqlalchemy import get_query
from fastmcp.exceptions import ToolError
from pydantic import Field
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from server.authz.decisions import ActionDecision, ResourceDecision, ResourceRef
from server.authz.errors import UNAVAILABLE_MESSAGE, AuthorizationUnavailable, ExpectedToolError
from server.authz.pdp import PolicyDecisionPoint
from server.edge.principal import Principal

log = logging.getLogger(__name__)

VIEW: Final = "view"
# Why a DENY happened, in words for the caller, keyed by the `reason` a DENY rule outputs.
REASONS: Final = {"mfa_required": "this needs a session with multi-factor authentication (MFA)"}

# The largest record id: what an INTEGER primary key holds on every supported database
# (PostgreSQL's is 32-bit). Larger ids cannot exist, so they are validation errors in tool
# arguments and missing records in resource URIs, never a database error.
MAX_RECORD_ID: Final = 2**31 - 1
RecordId = Annotated[int, Field(ge=1, le=MAX_RECORD_ID)]
# Canonical decimal ids only: "01", "+1", " 1", "1_0", full-width digits and "1e3" name nothing.
_CANONICAL_ID: Final = re.compile(r"[1-9][0-9]{0,9}")
# How a missing record is presented to the PDP: its id when the request named a valid one, and
# this marker in the placeholders' free-text attributes (visible in the PDP's decision log).
MISSING: Final = "missing"

R = TypeVar("R")


def record_key(value: object) -> int | None:
    """The primary key ``value`` names, or None when it cannot name a record."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 1 <= value <= MAX_RECORD_ID else None
    if isinstance(value, str) and _CANONICAL_ID.fullmatch(value):
        key = int(value)
        return key if key <= MAX_RECORD_ID else None
    return None


@dataclass(frozen=True)
class RecordPolicy(Generic[R]):
    """A record kind the capability's policy decides on (``policies/<kind>.yaml``).

    ``model`` is the table; ``columns`` maps each policy attribute to the column that stores it
    (NOT NULL, plaintext): the same map turns a query plan into SQL and a row into the
    attributes of a record check. ``placeholder`` gives a value for each of those attributes that
    stands for a record that does not exist: a check about a missing record sends it, so that
    "missing" takes the path of "forbidden" (its decision is never used). ``call_attributes``
    are attributes taken from a call rather than a column (e.g. the amount of a refund), with
    the value sent when the call sets none. Every attribute is part of what the policy's schema
    and the suites' fixtures must carry.
    """

    kind: str
    model: type[R]
    columns: Mapping[str, InstrumentedAttribute[Any]]
    placeholder: Mapping[str, Any]
    call_attributes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.placeholder) != set(self.columns):
            raise ValueError(
                f"record kind {self.kind!r}: the placeholder must give exactly the column "
                f"attributes {sorted(self.columns)}, not {sorted(self.placeholder)}"
            )
        overlap = set(self.call_attributes) & set(self.columns)
        if overlap:
            raise ValueError(f"record kind {self.kind!r}: {sorted(overlap)} are columns")
        foreign = [n for n, c in self.columns.items() if c.class_ is not self.model]
        if foreign:
            raise ValueError(f"record kind {self.kind!r}: {foreign} are not columns of the model")

    def attributes(self, row: R) -> dict[str, Any]:
        """``{policy attribute: value}`` for a stored row (columns only)."""
        return {name: getattr(row, column.key) for name, column in self.columns.items()}

    def resource(self, row: R | None, record_id: object, **call: Any) -> ResourceRef:
        """The record as the PDP sees it: the row's attributes, or for ``row`` None (no such
        record) the placeholder, plus the call attributes (``call`` overrides their defaults).
        ``record_id`` is the id asked for (``"new"`` for a record being created)."""
        unknown = sorted(set(call) - set(self.call_attributes))
        if unknown:
            raise ValueError(f"record kind {self.kind!r} has no call attributes {unknown}")
        columns = dict(self.placeholder) if row is None else self.attributes(row)
        ident = str(record_id) if record_id is not None else MISSING
        return ResourceRef(
            kind=self.kind, id=ident, attributes={**columns, **self.call_attributes, **call}
        )

    @property
    def attribute_names(self) -> frozenset[str]:
        return frozenset((*self.columns, *self.call_attributes))


class NotPermitted(ExpectedToolError):
    """The caller may see the record but not do this to it."""


class RecordNotFound(ExpectedToolError):
    """No record the caller may see has this id (it is missing, or the caller may not view it)."""


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

    async def fetch(
        self, session: AsyncSession, policy: RecordPolicy[R], record_id: object
    ) -> R | None:
        """The row ``record_id`` names, or None: missing, or not an id at all (no query then,
        since such an id names no record whoever asks)."""
        key = record_key(record_id)
        if key is None:
            return None
        return await session.get(policy.model, key)

    async def require(
        self,
        policy: RecordPolicy[R],
        row: R | None,
        action: str,
        *,
        record_id: object,
        not_found: Exception,
        doing: str,
        also: Sequence[str] = (),
        call: Mapping[str, Any] | None = None,
    ) -> tuple[R, ResourceDecision]:
        """Allow ``action`` on ``row`` or raise; decide the ``also`` actions in the same call.

        ``row`` is the record as read (None when there is none). Either way one PDP request asks
        for ``view``, ``action`` and ``also`` together: about the row, or about the kind's
        placeholder when there is no row, so a missing record takes the path of a forbidden
        one. A caller who may not view the record, and any caller of a missing one, gets
        ``not_found``; one who may view it but not act gets ``NotPermitted`` saying why (``doing``
        describes the action for that message). ``call`` sets the call attributes.
        """
        ref = policy.resource(row, record_key(record_id), **(call or {}))
        actions = tuple(dict.fromkeys((VIEW, action, *also)))
        (decision,) = await self.decide([ref], actions, must_allow=(VIEW, action))
        if row is None or not decision.allowed(VIEW):
            raise not_found
        outcome = decision.actions[action]
        if not outcome.allowed:
            raise NotPermitted(
                f"You may not {doing}: {denial_reason(outcome)}. Nothing was changed."
            )
        return row, decision

    async def load(
        self,
        session: AsyncSession,
        policy: RecordPolicy[R],
        record_id: object,
        action: str,
        *,
        not_found: Exception,
        doing: str,
        also: Sequence[str] = (),
        call: Mapping[str, Any] | None = None,
    ) -> tuple[R, ResourceDecision]:
        """``fetch`` then ``require``: the record ``record_id`` names, if ``action`` is allowed."""
        row = await self.fetch(session, policy, record_id)
        return await self.require(
            policy,
            row,
            action,
            record_id=record_id,
            not_found=not_found,
            doing=doing,
            also=also,
            call=call,
        )

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
