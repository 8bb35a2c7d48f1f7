"""The finance department's procedures, as prompts its staff can fetch."""

from __future__ import annotations

from typing import Annotated

from fastmcp.prompts import prompt
from pydantic import Field

from tools.accounts.models import DEPARTMENT


@prompt(
    name="refund_review",
    tags={"accounts"},
    meta={"department": DEPARTMENT, "sensitivity": "restricted"},
)
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
