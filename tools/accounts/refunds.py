"""Refunds: money leaves the company, so the policy may ask a human to confirm first.

The refund is decided on the account as read inside the transaction that records it. When the
decision carries the ``requires_confirmation`` obligation, the human is asked outside any
transaction, and the whole call is authorized again when the answer comes back: the account may
have changed while they thought. A confirmation runs its refund once.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Annotated

from fastmcp import Context
from fastmcp.dependencies import CurrentContext, Depends
from fastmcp.exceptions import ToolError
from fastmcp.tools import tool
from mcp.types import InputRequiredResult
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncSession

from server.capability import (
    WRITES,
    Principal,
    RecordAccess,
    Store,
    ask_human,
    get_principal,
    get_record_access,
    get_store,
    obligations,
    spend_confirmation,
)
from tools.accounts.access import authorized
from tools.accounts.models import DEPARTMENT, Account, AccountId, Refund, RefundOut

RESTRICTED = {"department": DEPARTMENT, "sensitivity": "restricted"}


@tool(tags={"accounts", "billing", "money_movement"}, meta=RESTRICTED, annotations=WRITES)
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
    answer = await ask_human(
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
        await spend_confirmation(session, answer, subject=subject, principal=caller)
        return await refund(session, account, amount, reason, caller, confirmed=True)


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
