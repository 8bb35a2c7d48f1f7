"""Reading accounts: the accounts the caller may see (filtered in SQL by a query plan) and one
account, as a tool and as a resource; contact details masked unless the policy allows them."""

from __future__ import annotations

from typing import Annotated

from fastmcp.dependencies import Depends
from fastmcp.resources import resource
from fastmcp.tools import tool
from pydantic import Field

from server.capability import (
    READ_ONLY,
    RecordAccess,
    Store,
    ToolIdentity,
    get_record_access,
    get_store,
    resource_not_found,
    tool_identity,
)
from tools.accounts import pii
from tools.accounts.access import not_found, reveal, viewable
from tools.accounts.models import (
    ACCOUNT,
    DEPARTMENT,
    VIEW_PII,
    Account,
    AccountId,
    AccountList,
    AccountOut,
    Plan,
)

TAGS = {"accounts"}
CONFIDENTIAL = {"department": DEPARTMENT, "sensitivity": "confidential"}


@tool(tags=TAGS, meta=CONFIDENTIAL, annotations=READ_ONLY)
async def list_accounts(
    plan: Annotated[Plan | None, Field(description="Only accounts on this plan.")] = None,
    limit: Annotated[
        int, Field(description="Maximum number of accounts to return.", ge=1, le=100)
    ] = 25,
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
    identity: ToolIdentity = Depends(tool_identity(pii.IDENTITY)),
) -> AccountList:
    """List the customer accounts you may see, with plan, status and contact details."""
    query = await access.query(Account, ACCOUNT.kind, "view", ACCOUNT.columns)
    query = query.order_by(Account.id).limit(limit)
    if plan is not None:
        query = query.where(Account.plan == plan)
    async with store.transaction() as session:
        rows = (await session.scalars(query)).all()
    # Whether each row's contact details may be shown: one batched decision for the page.
    refs = [ACCOUNT.resource(r, r.id) for r in rows]
    decisions = await access.decide(refs, (VIEW_PII,)) if rows else []
    visible = [r for r, d in zip(rows, decisions, strict=True) if d.allowed(VIEW_PII)]
    contacts = await reveal(identity, visible)
    accounts = [AccountOut.of(r, contacts=contacts.get(r.id)) for r in rows]
    return AccountList(accounts=accounts, count=len(accounts))


@tool(tags=TAGS, meta=CONFIDENTIAL, annotations=READ_ONLY)
async def get_account(
    account_id: AccountId,
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
    identity: ToolIdentity = Depends(tool_identity(pii.IDENTITY)),
) -> AccountOut:
    """Get one customer account: plan, status, region, contacts and refundable balance."""
    async with store.transaction() as session:
        return await viewable(session, access, identity, account_id, not_found(account_id))


@resource(
    "account://{account_id}",
    name="account",
    description="A customer account as JSON (contact details masked unless permitted).",
    mime_type="application/json",
    tags=TAGS,
    meta=CONFIDENTIAL,
)
async def account_resource(
    account_id: str,
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
    identity: ToolIdentity = Depends(tool_identity(pii.IDENTITY)),
) -> str:
    # The id as written in the URI: anything but a canonical id names no account. An account the
    # caller may not view reads exactly like a URI that matches nothing, by the same path.
    missing = resource_not_found()
    async with store.transaction() as session:
        account = await viewable(session, access, identity, account_id, missing)
        return account.model_dump_json()
