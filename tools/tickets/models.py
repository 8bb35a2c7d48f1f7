"""The tickets' tables, the ticket as its policy sees it, and what the tools return.

Columns that ``policies/ticket.yaml`` reads are NOT NULL and plaintext (see ``TICKET``): a query
plan turned into SQL must select exactly the rows a per-row decision would allow.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal, get_args

from pydantic import BaseModel, Field
from sqlalchemy import CheckConstraint, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.capability import MISSING, RecordId, RecordPolicy, Timestamp
from server.store.core import Base, utcnow

Status = Literal["open", "in_progress", "closed"]
Priority = Literal["low", "normal", "high", "urgent"]
Team = Literal["tier1", "tier2"]
Category = Literal["technical", "billing", "account"]
DEPARTMENT: Final = "support"


class Ticket(Base):
    __tablename__ = "ticket"
    __table_args__ = (
        CheckConstraint(f"status IN {get_args(Status)}", name="ticket_status"),
        CheckConstraint(f"priority IN {get_args(Priority)}", name="ticket_priority"),
        CheckConstraint(f"category IN {get_args(Category)}", name="ticket_category"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="open")
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    team: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(16), default="technical")
    department: Mapped[str] = mapped_column(String(64), default=DEPARTMENT)
    # "" when unassigned: NOT NULL keeps policy-derived filters exact.
    assignee: Mapped[str] = mapped_column(String(128), default="")
    created_by: Mapped[str] = mapped_column(String(128))
    resolution: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Optimistic concurrency: a write states the version it decided on.
    version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


class Outbox(Base):
    """Notifications of ticket changes waiting to be delivered, each signed (HMAC-SHA256) with a
    key from Vault (``tools.tickets.notifications``).

    Written in the same transaction as the change it announces, so a notification exists exactly
    when the change does. ``key_version`` names the version of the signing key in Vault, so a
    receiver can verify across key rotations.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[int]
    payload: Mapped[str] = mapped_column(Text)
    key_version: Mapped[int]
    signature: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# The ticket as policies/ticket.yaml sees it: policy attribute -> stored column, and what a
# ticket that does not exist is presented as (so that asking about it costs what asking about a
# forbidden one costs; that decision is never used).
TICKET: Final = RecordPolicy(
    kind="ticket",
    model=Ticket,
    columns={
        "team": Ticket.team,
        "department": Ticket.department,
        "status": Ticket.status,
        "priority": Ticket.priority,
        "category": Ticket.category,
        "assignee": Ticket.assignee,
        "created_by": Ticket.created_by,
    },
    placeholder={
        "team": "tier1",
        "department": MISSING,
        "status": "closed",
        "priority": "low",
        "category": "technical",
        "assignee": "",
        "created_by": MISSING,
    },
)

TicketId = Annotated[RecordId, Field(description="Numeric id of the ticket, e.g. 7.")]


class TicketOut(BaseModel):
    id: int
    title: str
    description: str
    status: Status
    priority: Priority
    team: Team
    category: Category
    assignee: str = Field(description='User id of the assignee, "" when unassigned.')
    created_by: str
    resolution: str
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def of(cls, row: Ticket) -> TicketOut:
        return cls.model_validate(row, from_attributes=True)


class TicketList(BaseModel):
    tickets: list[TicketOut]
    count: int
