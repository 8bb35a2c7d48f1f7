"""An account and the caller's right to it: load-and-decide, the contact details the caller may
see, and one authorized change.

``view_pii`` is decided in the same PDP call as the action, and contact details are decrypted,
through this capability's own Vault identity, only for rows whose ``view_pii`` was allowed, in
one batch per call. If Vault cannot decrypt, the call fails closed and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from fastmcp.exceptions import ToolError
from sqlalchemy.ext.asyncio import AsyncSession

from server.capability import RecordAccess, ResourceDecision, ResourceRef, Store, ToolIdentity
from tools.accounts import pii
from tools.accounts.models import ACCOUNT, VIEW_PII, Account, AccountOut


async def reveal(identity: ToolIdentity, rows: Sequence[Account]) -> dict[int, tuple[str, str]]:
    """Decrypt the contact details of ``rows`` (only those the caller may see unmasked), in one
    Vault request; none for no rows. Raises SecretsUnavailable (a safe ToolError) on failure."""
    if not rows:
        return {}
    plain = await identity.decrypt(pii.KEY, [text for r in rows for text in (r.email, r.phone)])
    return {r.id: (plain[2 * i], plain[2 * i + 1]) for i, r in enumerate(rows)}


async def contacts_for(
    identity: ToolIdentity, account: Account, decision: ResourceDecision
) -> tuple[str, str] | None:
    """The account's decrypted contacts if the decision allows ``view_pii``, else None."""
    contacts = await reveal(identity, [account] if decision.allowed(VIEW_PII) else [])
    return contacts.get(account.id)


def policy_resource(account: Account, *, refund_amount: Decimal = Decimal(0)) -> ResourceRef:
    attributes = ACCOUNT.attributes(account)
    # Only the refund decision needs an argument of the call: its amount, nothing else.
    attributes["refund_amount"] = float(refund_amount)
    return ResourceRef(kind=ACCOUNT.kind, id=str(account.id), attributes=attributes)


def not_found(account_id: int) -> ToolError:
    return ToolError(f"Account {account_id} not found.")


async def authorized(
    session: AsyncSession,
    access: RecordAccess,
    account_id: int,
    action: str,
    doing: str,
    *,
    refund_amount: Decimal = Decimal(0),
) -> tuple[Account, ResourceDecision]:
    """Load the account and require ``action`` on it; forbidden and missing look the same.

    ``view_pii`` is decided in the same PDP call, for the account the tool returns.
    """
    account = await session.get(Account, account_id)
    if account is None:
        raise not_found(account_id)
    decision = await access.require(
        policy_resource(account, refund_amount=refund_amount),
        action,
        not_found=not_found(account_id),
        doing=doing,
        also=(VIEW_PII,),
    )
    return account, decision


async def viewable(
    session: AsyncSession,
    access: RecordAccess,
    identity: ToolIdentity,
    account_id: int,
    missing: Exception,
) -> AccountOut:
    """The account as the caller may see it: one decision for view and view_pii together."""
    account = await session.get(Account, account_id)
    if account is None:
        raise missing
    (decision,) = await access.decide(
        [policy_resource(account)], ("view", VIEW_PII), must_allow=("view",)
    )
    if not decision.allowed("view"):
        raise missing
    return AccountOut.of(account, contacts=await contacts_for(identity, account, decision))


@dataclass(frozen=True)
class Change:
    """One authorized change of an account, returned as the caller may see it, in one
    transaction: if Vault cannot decrypt the contacts afterwards, the change is rolled back."""

    store: Store
    access: RecordAccess
    identity: ToolIdentity

    async def __call__(
        self, account_id: int, action: str, doing: str, apply: Callable[[Account], None]
    ) -> AccountOut:
        async with self.store.transaction() as session:
            account, decision = await authorized(session, self.access, account_id, action, doing)
            apply(account)
            await session.flush()
            contacts = await contacts_for(self.identity, account, decision)
            return AccountOut.of(account, contacts=contacts)
