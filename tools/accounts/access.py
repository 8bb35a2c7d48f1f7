"""An account and the caller's right to it: load-and-decide, the contact details the caller may
see, and one authorized change.

An account the caller may not view is reported exactly like one that does not exist, and takes
the same path (``RecordAccess.load``). ``view_pii`` is decided in the same PDP call as the
action, and contact details are decrypted, through this capability's own Vault identity, only
for rows whose ``view_pii`` was allowed, in one batch per call. If Vault cannot decrypt, the call
fails closed and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from server.capability import (
    RecordAccess,
    RecordNotFound,
    ResourceDecision,
    Store,
    ToolIdentity,
)
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


def not_found(account_id: int) -> RecordNotFound:
    return RecordNotFound(f"Account {account_id} not found.")


async def authorized(
    session: AsyncSession, access: RecordAccess, account_id: int, action: str, doing: str
) -> tuple[Account, ResourceDecision]:
    """Load the account and require ``action`` on it; forbidden and missing look the same.

    ``view_pii`` is decided in the same PDP call, for the account the tool returns.
    """
    return await access.load(
        session,
        ACCOUNT,
        account_id,
        action,
        not_found=not_found(account_id),
        doing=doing,
        also=(VIEW_PII,),
    )


async def viewable(
    session: AsyncSession,
    access: RecordAccess,
    identity: ToolIdentity,
    account_id: int | str,
    missing: Exception,
) -> AccountOut:
    """The account as the caller may see it: one decision for view and view_pii together."""
    account, decision = await access.load(
        session, ACCOUNT, account_id, "view", not_found=missing, doing="view it", also=(VIEW_PII,)
    )
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
