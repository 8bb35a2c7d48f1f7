"""Customer account tools: plans, refunds and suspensions, owned by the finance department."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastmcp import FastMCP
from fastmcp.dependencies import Depends
from fastmcp.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.dependencies import get_principal, get_store
from server.principal import Principal
from server.store import Account, Refund, Store

DEPARTMENT = "finance"
CONFIDENTIAL = {"department": DEPARTMENT, "sensitivity": "confidential"}
RESTRICTED = {"department": DEPARTMENT, "sensitivity": "restricted"}

AccountId = Annotated[int, Field(description="Numeric id of the customer account, e.g. 2.", ge=1)]
Plan = Literal["free", "pro", "enterprise"]

READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
WRITES = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)
DESTRUCTIVE = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)


class AccountOut(BaseModel):
    id: int
    name: str
    plan: Plan
    status: Literal["active", "suspended"]
    region: str
    segment: str
    email: str
    phone: str
    balance: Decimal = Field(description="Refundable balance in the account currency.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Account) -> AccountOut:
        return cls(
            id=row.id,
            name=row.name,
            plan=row.plan,
            status=row.status,
            region=row.region,
            segment=row.segment,
            email=row.email,
            phone=row.phone,
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


class Deleted(BaseModel):
    id: int
    deleted: bool = True


async def load(session: AsyncSession, account_id: int) -> Account:
    row = await session.get(Account, account_id)
    if row is None:
        raise ToolError(f"Account {account_id} not found.")
    return row


def register(mcp: FastMCP) -> None:
    tags = {"accounts"}

    @mcp.tool(tags=tags, meta=CONFIDENTIAL, annotations=READ_ONLY)
    async def list_accounts(
        plan: Annotated[Plan | None, Field(description="Only accounts on this plan.")] = None,
        limit: Annotated[
            int, Field(description="Maximum number of accounts to return.", ge=1, le=100)
        ] = 25,
        store: Store = Depends(get_store),
    ) -> AccountList:
        """List customer accounts with plan, status and contact details."""
        query = select(Account).order_by(Account.id).limit(limit)
        if plan is not None:
            query = query.where(Account.plan == plan)
        async with store.transaction() as session:
            rows = (await session.scalars(query)).all()
        return AccountList(accounts=[AccountOut.of(r) for r in rows], count=len(rows))

    @mcp.tool(tags=tags, meta=CONFIDENTIAL, annotations=READ_ONLY)
    async def get_account(account_id: AccountId, store: Store = Depends(get_store)) -> AccountOut:
        """Get one customer account: plan, status, region, contacts and refundable balance."""
        async with store.transaction() as session:
            return AccountOut.of(await load(session, account_id))

    @mcp.tool(tags=tags | {"billing"}, meta=CONFIDENTIAL, annotations=WRITES)
    async def update_plan(
        account_id: AccountId,
        plan: Annotated[Plan, Field(description="The plan the account should be on from now on.")],
        store: Store = Depends(get_store),
    ) -> AccountOut:
        """Move an account to another plan (upgrade or downgrade)."""
        async with store.transaction() as session:
            account = await load(session, account_id)
            if account.status != "active":
                raise ToolError(
                    f"Account {account_id} is suspended; reactivate it before changing plans."
                )
            account.plan = plan
            await session.flush()
            return AccountOut.of(account)

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
        store: Store = Depends(get_store),
        caller: Principal = Depends(get_principal),
    ) -> RefundOut:
        """Refund part of an account's balance to the customer. Records who issued it and why."""
        cents = int(amount * 100)
        async with store.transaction() as session:
            account = await load(session, account_id)
            if cents > account.balance_cents:
                raise ToolError(f"Refund exceeds the refundable balance of account {account_id}.")
            refund = Refund(
                account_id=account_id, amount_cents=cents, reason=reason, created_by=caller.id
            )
            session.add(refund)
            account.balance_cents -= cents
            await session.flush()
            return RefundOut(
                id=refund.id,
                account_id=account_id,
                amount=Decimal(cents) / 100,
                reason=reason,
                created_by=caller.id,
                remaining_balance=Decimal(account.balance_cents) / 100,
            )

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
    ) -> AccountOut:
        """Suspend an account: the customer loses access until it is reactivated."""
        async with store.transaction() as session:
            account = await load(session, account_id)
            if account.status == "suspended":
                raise ToolError(f"Account {account_id} is already suspended.")
            account.status = "suspended"
            await session.flush()
            return AccountOut.of(account)

    @mcp.tool(tags=tags, meta=RESTRICTED, annotations=DESTRUCTIVE)
    async def delete_account(account_id: AccountId, store: Store = Depends(get_store)) -> Deleted:
        """Permanently delete an account and its refund history. This cannot be undone."""
        async with store.transaction() as session:
            await session.delete(await load(session, account_id))
        return Deleted(id=account_id)

    @mcp.resource(
        "account://{account_id}",
        name="account",
        description="A customer account as JSON.",
        mime_type="application/json",
        tags=tags,
        meta=CONFIDENTIAL,
    )
    async def account_resource(account_id: int, store: Store = Depends(get_store)) -> str:
        async with store.transaction() as session:
            return AccountOut.of(await load(session, account_id)).model_dump_json()

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
