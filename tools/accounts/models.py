"""The accounts' tables, the account as its policy sees it, and what the tools return.

Columns that ``policies/account.yaml`` reads are NOT NULL and plaintext (see ``ACCOUNT``);
contact details are ciphertext, with masked forms beside them (``tools.accounts.pii``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Final, Literal, get_args

from pydantic import BaseModel, Field
from sqlalchemy import CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.capability import MISSING, RecordId, RecordPolicy, Timestamp
from server.store.core import Base, utcnow
from tools.accounts.pii import CIPHERTEXT_PREFIX

Plan = Literal["free", "pro", "enterprise"]
AccountStatus = Literal["active", "suspended"]
DEPARTMENT: Final = "finance"


class Account(Base):
    __tablename__ = "account"
    __table_args__ = (
        CheckConstraint(f"plan IN {get_args(Plan)}", name="account_plan"),
        CheckConstraint(f"status IN {get_args(AccountStatus)}", name="account_status"),
        # Contact details are never stored in clear: only transit ciphertext gets in.
        CheckConstraint(f"email LIKE '{CIPHERTEXT_PREFIX}%'", name="account_email_encrypted"),
        CheckConstraint(f"phone LIKE '{CIPHERTEXT_PREFIX}%'", name="account_phone_encrypted"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="active")
    region: Mapped[str] = mapped_column(String(16))
    segment: Mapped[str] = mapped_column(String(32))
    department: Mapped[str] = mapped_column(String(64), default=DEPARTMENT)
    # Vault transit ciphertext (key "accounts"), and the masked forms anyone allowed to see the
    # account may see.
    email: Mapped[str] = mapped_column(Text)
    phone: Mapped[str] = mapped_column(Text)
    email_masked: Mapped[str] = mapped_column(String(256))
    phone_masked: Mapped[str] = mapped_column(String(32))
    balance_cents: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


class Refund(Base):
    __tablename__ = "refund"
    __table_args__ = (CheckConstraint("amount_cents > 0", name="refund_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    amount_cents: Mapped[int]
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# The account as policies/account.yaml sees it: policy attribute -> stored column, what an
# account that does not exist is presented as (so that asking about it costs what asking about a
# forbidden one costs; that decision is never used), and the attributes of a refund being
# decided: its amount, and what the same principal already refunded on the account that day
# (refund limits apply to the day's sum, so splitting a refund does not get around them).
ACCOUNT: Final = RecordPolicy(
    kind="account",
    model=Account,
    columns={
        "department": Account.department,
        "region": Account.region,
        "segment": Account.segment,
        "plan": Account.plan,
        "status": Account.status,
    },
    placeholder={
        "department": MISSING,
        "region": "eu",
        "segment": "smb",
        "plan": "free",
        "status": "suspended",
    },
    call_attributes={"refund_amount": 0.0, "refunded_today": 0.0},
)
VIEW_PII: Final = "view_pii"

AccountId = Annotated[RecordId, Field(description="Numeric id of the customer account, e.g. 2.")]


class AccountOut(BaseModel):
    id: int
    name: str
    plan: Plan
    status: AccountStatus
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
