"""Changing accounts: move to another plan, suspend, delete."""

from __future__ import annotations

from typing import Annotated

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from server.capability import (
    DESTRUCTIVE,
    WRITES,
    Deleted,
    RecordAccess,
    Store,
    ToolIdentity,
    get_record_access,
    get_store,
    tool_identity,
)
from tools.accounts import pii
from tools.accounts.access import Change, authorized
from tools.accounts.models import DEPARTMENT, Account, AccountId, AccountOut, Plan

TAGS = {"accounts"}
CONFIDENTIAL = {"department": DEPARTMENT, "sensitivity": "confidential"}
RESTRICTED = {"department": DEPARTMENT, "sensitivity": "restricted"}


@tool(tags=TAGS | {"billing"}, meta=CONFIDENTIAL, annotations=WRITES)
async def update_plan(
    account_id: AccountId,
    plan: Annotated[Plan, Field(description="The plan the account should be on from now on.")],
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
    identity: ToolIdentity = Depends(tool_identity(pii.IDENTITY)),
) -> AccountOut:
    """Move an active account to another plan (upgrade or downgrade)."""

    def apply(account: Account) -> None:
        account.plan = plan

    change = Change(store, access, identity)
    return await change(
        account_id, "update_plan", f"change the plan of account {account_id}", apply
    )


@tool(tags=TAGS, meta=RESTRICTED, annotations=WRITES)
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
    identity: ToolIdentity = Depends(tool_identity(pii.IDENTITY)),
) -> AccountOut:
    """Suspend an active account: the customer loses access until it is reactivated."""

    def apply(account: Account) -> None:
        account.status = "suspended"

    change = Change(store, access, identity)
    return await change(account_id, "suspend", f"suspend account {account_id}", apply)


@tool(tags=TAGS, meta=RESTRICTED, annotations=DESTRUCTIVE)
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
