"""Refunds: money leaves the company, so the policy limits them and may ask a human first.

Limits apply to what a principal refunds on an account in a day, not to one call: the refund is
decided on the account as read inside the transaction that records it, together with the sum of
the caller's refunds on that account since the start of the day (UTC, by the store's clock), so
splitting a refund does not get around the human. Two concurrent refunds cannot both be decided
on the same stale sum: each lowers the account's balance, and the account's version column lets
only one of two transactions that read the same version write (the other is rolled back and
told to retry).

When the decision carries the ``requires_confirmation`` obligation, the human is asked outside
any transaction, and the whole call is authorized again when the answer comes back, on the
account and the day's sum as they are then. A confirmation runs its refund once.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated

from fastmcp import Context
from fastmcp.dependencies import CurrentContext, Depends
from fastmcp.tools import tool
from mcp.types import InputRequiredResult
from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.capability import (
    WRITES,
    ExpectedToolError,
    Principal,
    RecordAccess,
    ResourceDecision,
    Store,
    ask_human,
    get_principal,
    get_record_access,
    get_store,
    obligations,
    spend_confirmation,
)
from tools.accounts.access import not_found
from tools.accounts.models import ACCOUNT, DEPARTMENT, Account, AccountId, Refund, RefundOut

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

    Refunds that take what you refunded on the account today above your limit may need a human
    to confirm them before they run.
    """
    doing = f"refund {amount} to account {account_id}"
    async with store.transaction() as session:
        now = store.now()
        account, decision = await decide(session, access, caller, account_id, amount, doing, now)
        ask = obligations(decision.actions["refund"])
        if not ask.requires_confirmation:
            return await refund(session, account, amount, reason, caller, now, confirmed=False)
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
        # Decided again on the record and the day's sum as they are now: either may have
        # changed while the human thought.
        now = store.now()
        account, _ = await decide(session, access, caller, account_id, amount, doing, now)
        await spend_confirmation(session, answer, subject=subject, principal=caller)
        return await refund(session, account, amount, reason, caller, now, confirmed=True)


def utc_day(moment: datetime) -> tuple[datetime, datetime]:
    """The UTC day (start, end) that ``moment`` (naive UTC) falls in."""
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


async def refunded_today(
    session: AsyncSession, account_id: int, principal: Principal, now: datetime
) -> Decimal:
    """What ``principal`` refunded on the account during ``now``'s UTC day."""
    start, end = utc_day(now)
    cents = await session.scalar(
        select(func.coalesce(func.sum(Refund.amount_cents), 0)).where(
            Refund.account_id == account_id,
            Refund.created_by == principal.id,
            Refund.created_at >= start,
            Refund.created_at < end,
        )
    )
    return Decimal(int(cents or 0)) / 100


async def decide(
    session: AsyncSession,
    access: RecordAccess,
    caller: Principal,
    account_id: int,
    amount: Decimal,
    doing: str,
    now: datetime,
) -> tuple[Account, ResourceDecision]:
    """Require ``refund`` of ``amount`` on the account, given the caller's refunds today.

    The account is read first and the day's sum after it, in the caller's transaction: a refund
    committed after our read of the account also bumped its version, so our write fails rather
    than running on a sum that missed it. A missing account takes the same path (same queries,
    same PDP request) as one the caller may not view.
    """
    account = await access.fetch(session, ACCOUNT, account_id)
    already = await refunded_today(session, account_id, caller, now)
    return await access.require(
        ACCOUNT,
        account,
        "refund",
        record_id=account_id,
        not_found=not_found(account_id),
        doing=doing,
        call={"refund_amount": float(amount), "refunded_today": float(already)},
    )


async def refund(
    session: AsyncSession,
    account: Account,
    amount: Decimal,
    reason: str,
    caller: Principal,
    now: datetime,
    *,
    confirmed: bool,
) -> RefundOut:
    """Record the refund and lower the balance, in the caller's transaction (all or nothing).

    Lowering the balance writes the account row under its version: of two transactions that
    decided on the same version, only the first to commit writes.
    """
    cents = int(amount * 100)
    if cents > account.balance_cents:
        raise ExpectedToolError(
            f"Refund exceeds the refundable balance of account {account.id}. Nothing was changed."
        )
    row = Refund(
        account_id=account.id,
        amount_cents=cents,
        reason=reason,
        created_by=caller.id,
        created_at=now,
    )
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
