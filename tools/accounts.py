"""Customer account tools: plans, refunds and suspensions, owned by the finance department.

Beyond the tool gate, every account is checked against ``policies/account.yaml``: who may see it
(list_accounts returns only those rows), who sees its contact details unmasked (``view_pii``),
and who may change it or move money. A refund above the caller's limit is allowed only after a
human confirms it, when the policy says so.

Contact details are stored encrypted with Vault's ``accounts`` transit key (server/pii.py). They
are decrypted, through these tools' own Vault identity, only for rows whose ``view_pii`` the
policy allowed, in one batch per call; everyone else gets the stored masked form, and the
plaintext is never decrypted for them. If Vault cannot decrypt, the call fails closed and
changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Final, Literal

from fastmcp import Context, FastMCP
from fastmcp.dependencies import CurrentContext, Depends
from fastmcp.exceptions import ToolError
from mcp.types import InputRequiredResult
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from server import confirmation
from server.authz.errors import not_found as component_not_found
from server.authz.pdp import ResourceDecision, ResourceRef
from server.authz.records import RecordAccess, obligations
from server.dependencies import get_principal, get_record_access, get_store, tool_identity
from server.identities import ToolIdentity
from server.pii import PII_IDENTITY, PII_KEY
from server.principal import Principal
from server.store import Account, Refund, Store
from server.timestamps import Timestamp
from server.tooling import DESTRUCTIVE, READ_ONLY, WRITES, Deleted, policy_attributes

DEPARTMENT = "finance"
CONFIDENTIAL = {"department": DEPARTMENT, "sensitivity": "confidential"}
RESTRICTED = {"department": DEPARTMENT, "sensitivity": "restricted"}

# The account as the policy sees it: policy attribute -> stored column (NOT NULL, plaintext).
POLICY_KIND: Final = "account"
POLICY_COLUMNS: Final = {
    "department": Account.department,
    "region": Account.region,
    "segment": Account.segment,
    "plan": Account.plan,
    "status": Account.status,
}
VIEW_PII: Final = "view_pii"

AccountId = Annotated[int, Field(description="Numeric id of the customer account, e.g. 2.", ge=1)]
Plan = Literal["free", "pro", "enterprise"]


class AccountOut(BaseModel):
    id: int
    name: str
    plan: Plan
    status: Literal["active", "suspended"]
    region: str
    segment: str
    email: str = Field(description="Contact email; masked unless you may see personal data.")
    phone: str = Field(description="Contact phone; masked unless you may see personal data.")
    pii_masked: bool
    balance: Decimal = Field(description="Refundable balance in the account currency.")
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def of(cls, row: Account, *, contacts: tuple[str, str] | None) -> AccountOut:
        """``contacts``: the decrypted (email, phone), or None to show the masked forms."""
        email, phone = contacts or (row.email_masked, row.phone_masked)
        return cls(
            id=row.id,
            name=row.name,
            plan=row.plan,
            status=row.status,
            region=row.region,
            segment=row.segment,
            email=email,
            phone=phone,
            pii_masked=contacts is None,
            balance=Decimal(row.balance_cents) / 100,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class AccountList(BaseModel):
    accounts: list[AccountOut]
    count: int


class RefundOut(BaseModel):
    id: int
    account_id: int
    amount: Decimal
    reason: str
    created_by: str
    remaining_balance: Decimal
    confirmed_by_human: bool


async def reveal(identity: ToolIdentity, rows: Sequence[Account]) -> dict[int, tuple[str, str]]:
    """Decrypt the contact details of ``rows`` (only those the caller may see unmasked), in one
    Vault request; none for no rows. Raises SecretsUnavailable (a safe ToolError) on failure."""
    if not rows:
        return {}
    plain = await identity.decrypt(PII_KEY, [text for r in rows for text in (r.email, r.phone)])
    return {r.id: (plain[2 * i], plain[2 * i + 1]) for i, r in enumerate(rows)}


async def contacts_for(
    identity: ToolIdentity, account: Account, decision: ResourceDecision
) -> tuple[str, str] | None:
    """The account's decrypted contacts if the decision allows ``view_pii``, else None."""
    contacts = await reveal(identity, [account] if decision.allowed(VIEW_PII) else [])
    return contacts.get(account.id)


def policy_resource(account: Account, *, refund_amount: Decimal = Decimal(0)) -> ResourceRef:
    attributes = policy_attributes(account, POLICY_COLUMNS)
    # Only the refund decision needs an argument of the call: its amount, nothing else.
    attributes["refund_amount"] = float(refund_amount)
    return ResourceRef(kind=POLICY_KIND, id=str(account.id), attributes=attributes)


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


def register(mcp: FastMCP) -> None:
    tags = {"accounts"}

    @mcp.tool(tags=tags, meta=CONFIDENTIAL, annotations=READ_ONLY)
    async def list_accounts(
        plan: Annotated[Plan | None, Field(description="Only accounts on this plan.")] = None,
        limit: Annotated[
            int, Field(description="Maximum number of accounts to return.", ge=1, le=100)
        ] = 25,
        store: Store = Depends(get_store),
        access: RecordAccess = Depends(get_record_access),
        identity: ToolIdentity = Depends(tool_identity(PII_IDENTITY)),
    ) -> AccountList:
        """List the customer accounts you may see, with plan, status and contact details."""
        query = await access.query(Account, POLICY_KIND, "view", POLICY_COLUMNS)
        query = query.order_by(Account.id).limit(limit)
        if plan is not None:
            query = query.where(Account.plan == plan)
        async with store.transaction() as session:
            rows = (await session.scalars(query)).all()
        # Whether each row's contact details may be shown: one batched decision for the page.
        pii = await access.decide([policy_resource(r) for r in rows], (VIEW_PII,)) if rows else []
        visible = [r for r, d in zip(rows, pii, strict=True) if d.allowed(VIEW_PII)]
        contacts = await reveal(identity, visible)
        accounts = [AccountOut.of(r, contacts=contacts.get(r.id)) for r in rows]
        return AccountList(accounts=accounts, count=len(accounts))

    @mcp.tool(tags=tags, meta=CONFIDENTIAL, annotations=READ_ONLY)
    async def get_account(
        account_id: AccountId,
        store: Store = Depends(get_store),
        access: RecordAccess = Depends(get_record_access),
        identity: ToolIdentity = Depends(tool_identity(PII_IDENTITY)),
    ) -> AccountOut:
        """Get one customer account: plan, status, region, contacts and refundable balance."""
        async with store.transaction() as session:
            return await viewable(session, access, identity, account_id, not_found(account_id))

    @mcp.tool(tags=tags | {"billing"}, meta=CONFIDENTIAL, annotations=WRITES)
    async def update_plan(
        account_id: AccountId,
        plan: Annotated[Plan, Field(description="The plan the account should be on from now on.")],
        store: Store = Depends(get_store),
        access: RecordAccess = Depends(get_record_access),
        identity: ToolIdentity = Depends(tool_identity(PII_IDENTITY)),
    ) -> AccountOut:
        """Move an active account to another plan (upgrade or downgrade)."""

        def apply(account: Account) -> None:
            account.plan = plan

        change = Change(store, access, identity)
        return await change(
            account_id, "update_plan", f"change the plan of account {account_id}", apply
        )

    @mcp.tool(tags=tags | {"billing", "money_movement"}, meta=RESTRICTED, annotations=WRITES)
    async def issue_refund(
        account_id: AccountId,
        amount: Annotated[
            Decimal,
            Field(
                description="Amount to refund, in the account currency, e.g. 49.99.",
                gt=0,
                le=1_000_000,
                decimal_places=2,
            ),
        ],
        reason: Annotated[
            str,
            Field(
                description="Why the customer is refunded; kept in the audit record.",
                min_length=3,
                max_length=1_000,
            ),
        ],
        ctx: Context = CurrentContext(),
        store: Store = Depends(get_store),
        access: RecordAccess = Depends(get_record_access),
        caller: Principal = Depends(get_principal),
    ) -> RefundOut | InputRequiredResult:
        """Refund part of an account's balance to the customer. Records who issued it and why.

        Refunds above your limit may need a human to confirm them before they run.
        """
        doing = f"refund {amount} to account {account_id}"
        async with store.transaction() as session:
            account, decision = await authorized(
                session, access, account_id, "refund", doing, refund_amount=amount
            )
            ask = obligations(decision.actions["refund"])
            if not ask.requires_confirmation:
                return await refund(session, account, amount, reason, caller, confirmed=False)
            name = account.name

        # Ask the human outside any transaction; on 2026-07-28 connections this returns the
        # question, and the client retries the whole call (re-authorized) with the answer.
        fingerprint = hashlib.sha256(reason.encode()).hexdigest()[:16]
        subject = f"refund:{account_id}:{amount}:{fingerprint}"
        answer = await confirmation.ask(
            ctx,
            caller,
            subject=subject,
            question=f"Refund {amount} to {name} (account {account_id})? Needed: {ask.reason}.",
            what="the refund",
        )
        if isinstance(answer, InputRequiredResult):
            return answer
        async with store.transaction() as session:
            # Decided again on the record as it is now: it may have changed while the human thought.
            account, _ = await authorized(
                session, access, account_id, "refund", doing, refund_amount=amount
            )
            await confirmation.spend(session, answer, subject=subject, principal=caller)
            return await refund(session, account, amount, reason, caller, confirmed=True)

    @mcp.tool(tags=tags, meta=RESTRICTED, annotations=WRITES)
    async def suspend_account(
        account_id: AccountId,
        reason: Annotated[
            str,
            Field(
                description="Why the account is suspended (fraud, non-payment, request).",
                min_length=3,
                max_length=1_000,
            ),
        ],
        store: Store = Depends(get_store),
        access: RecordAccess = Depends(get_record_access),
        identity: ToolIdentity = Depends(tool_identity(PII_IDENTITY)),
    ) -> AccountOut:
        """Suspend an active account: the customer loses access until it is reactivated."""

        def apply(account: Account) -> None:
            account.status = "suspended"

        change = Change(store, access, identity)
        return await change(account_id, "suspend", f"suspend account {account_id}", apply)

    @mcp.tool(tags=tags, meta=RESTRICTED, annotations=DESTRUCTIVE)
    async def delete_account(
        account_id: AccountId,
        store: Store = Depends(get_store),
        access: RecordAccess = Depends(get_record_access),
    ) -> Deleted:
        """Permanently delete an account and its refund history. This cannot be undone."""
        async with store.transaction() as session:
            account, _ = await authorized(
                session, access, account_id, "delete", f"delete account {account_id}"
            )
            await session.delete(account)
        return Deleted(id=account_id)

    @mcp.resource(
        "account://{account_id}",
        name="account",
        description="A customer account as JSON (contact details masked unless permitted).",
        mime_type="application/json",
        tags=tags,
        meta=CONFIDENTIAL,
    )
    async def account_resource(
        account_id: int,
        store: Store = Depends(get_store),
        access: RecordAccess = Depends(get_record_access),
        identity: ToolIdentity = Depends(tool_identity(PII_IDENTITY)),
    ) -> str:
        # An account the caller may not view reads exactly like a URI that matches nothing.
        missing = component_not_found("resource", f"account://{account_id}")
        async with store.transaction() as session:
            account = await viewable(session, access, identity, account_id, missing)
            return account.model_dump_json()

    @mcp.prompt(name="refund_review", tags=tags, meta=RESTRICTED)
    async def refund_review(
        account_id: Annotated[str, Field(description="Id of the account asking for a refund.")],
        amount: Annotated[str, Field(description="Requested refund amount.")],
    ) -> str:
        """Review a refund request against the account's history before issuing it."""
        return (
            f"Review a refund of {amount} for account {account_id}. Read the account with "
            "get_account, check the refundable balance and plan, and recommend approve or reject "
            "with a one-paragraph justification. Do not issue the refund yourself."
        )


async def refund(
    session: AsyncSession,
    account: Account,
    amount: Decimal,
    reason: str,
    caller: Principal,
    *,
    confirmed: bool,
) -> RefundOut:
    """Record the refund and lower the balance, in the caller's transaction (all or nothing)."""
    cents = int(amount * 100)
    if cents > account.balance_cents:
        raise ToolError(
            f"Refund exceeds the refundable balance of account {account.id}. Nothing was changed."
        )
    row = Refund(account_id=account.id, amount_cents=cents, reason=reason, created_by=caller.id)
    session.add(row)
    account.balance_cents -= cents
    await session.flush()
    return RefundOut(
        id=row.id,
        account_id=account.id,
        amount=Decimal(cents) / 100,
        reason=reason,
        created_by=caller.id,
        remaining_balance=Decimal(account.balance_cents) / 100,
        confirmed_by_human=confirmed,
    )
