"""The example store: tickets and customer accounts, on SQLAlchemy (SQLite by default).

Columns that policies read (team, department, status, assignee, region, segment) are NOT NULL:
SQL NULL semantics are stricter than the policy language's, and a query filter derived from a
policy must select exactly the rows a per-row decision would allow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from fastmcp.exceptions import ToolError
from pydantic import SecretStr
from sqlalchemy import CheckConstraint, ForeignKey, String, Text, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from server import store_tracing
from server.pii import CIPHERTEXT_PREFIX, Encrypt, mask_email, mask_phone


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class RecordChanged(ToolError):
    """A concurrent write won: this one was rolled back."""


class Base(DeclarativeBase):
    pass


TICKET_STATUSES = ("open", "in_progress", "closed")
PRIORITIES = ("low", "normal", "high", "urgent")
TEAMS = ("tier1", "tier2")
CATEGORIES = ("technical", "billing", "account")
PLANS = ("free", "pro", "enterprise")
ACCOUNT_STATUSES = ("active", "suspended")


class Ticket(Base):
    __tablename__ = "ticket"
    __table_args__ = (
        CheckConstraint(f"status IN {TICKET_STATUSES}", name="ticket_status"),
        CheckConstraint(f"priority IN {PRIORITIES}", name="ticket_priority"),
        CheckConstraint(f"category IN {CATEGORIES}", name="ticket_category"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="open")
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    team: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(16), default="technical")
    department: Mapped[str] = mapped_column(String(64), default="support")
    # "" when unassigned: NOT NULL keeps policy-derived filters exact.
    assignee: Mapped[str] = mapped_column(String(128), default="")
    created_by: Mapped[str] = mapped_column(String(128))
    resolution: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Optimistic concurrency: a write states the version it decided on.
    version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


class Account(Base):
    __tablename__ = "account"
    __table_args__ = (
        CheckConstraint(f"plan IN {PLANS}", name="account_plan"),
        CheckConstraint(f"status IN {ACCOUNT_STATUSES}", name="account_status"),
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
    department: Mapped[str] = mapped_column(String(64), default="finance")
    # Vault transit ciphertext (key "accounts"), and the masked forms anyone allowed to see the
    # account may see (server/pii.py).
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


class Outbox(Base):
    """Notifications waiting to be delivered, each signed (HMAC-SHA256) with a key from Vault.

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


class ConfirmationUse(Base):
    """Each human confirmation runs its action once: its nonce is stored with the action."""

    __tablename__ = "confirmation_use"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    principal: Mapped[str] = mapped_column(String(128))
    used_at: Mapped[datetime] = mapped_column(default=utcnow)


class Store:
    """Owns the engine; hands out one session (and transaction) per unit of work."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("store not started")
        return self._engine

    async def start(
        self,
        *,
        seed: bool,
        encrypt_pii: Encrypt | None = None,
        password: SecretStr | None = None,
    ) -> None:
        """Create the schema; with ``seed``, add demo rows to empty tables, encrypting their
        personal data with ``encrypt_pii`` (the accounts identity's transit encryption).

        ``password`` (from Vault, never from the URL in configuration) is used for a database
        server's user; SQLite has none.
        """
        url = make_url(self.url)
        if password is not None and url.get_backend_name() != "sqlite":
            url = url.set(password=password.get_secret_value())
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            # SQLite has one writer at a time; a write (a change plus its signed outbox row) waits
            # up to 15 s for the lock under bursts of concurrent writers instead of failing.
            engine = create_async_engine(url, connect_args={"timeout": 15})
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(url, pool_pre_ping=True)
        store_tracing.instrument(engine)
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        if seed:
            if encrypt_pii is None:
                raise ValueError("seeding demo accounts needs encrypt_pii")
            await self._seed_if_empty(encrypt_pii)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = self._sessions = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: commit on success, roll back on any error."""
        if self._sessions is None:
            raise RuntimeError("store not started")
        try:
            async with self._sessions() as session, session.begin():
                yield session
        except StaleDataError:
            # The row's version moved between our read (and authorization) and our write.
            raise RecordChanged(
                "The record changed while this request was being decided; nothing was saved. "
                "Read it again and retry."
            ) from None

    async def _seed_if_empty(self, encrypt_pii: Encrypt) -> None:
        async with self.transaction() as session:
            if (await session.scalar(select(func.count()).select_from(Ticket))) == 0:
                session.add_all(_demo_tickets())
            if (await session.scalar(select(func.count()).select_from(Account))) == 0:
                session.add_all(await _demo_accounts(encrypt_pii))


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _demo_tickets() -> list[Ticket]:
    rows = [
        ("Password reset email never arrives", "tier1", "high", "account", "alice"),
        ("Cannot update billing address", "tier1", "normal", "billing", ""),
        ("Dashboard shows wrong time zone", "tier1", "low", "technical", "alice"),
        ("Export to CSV times out", "tier1", "normal", "technical", ""),
        ("Two-factor codes rejected on mobile", "tier1", "urgent", "account", ""),
        ("Invoice PDF is blank", "tier1", "normal", "billing", ""),
        ("API returns 500 on bulk import", "tier2", "urgent", "technical", "bob"),
        ("Webhook deliveries delayed by hours", "tier2", "high", "technical", "bob"),
        ("SSO login loops after IdP change", "tier2", "high", "account", ""),
        ("Charged twice for the annual plan", "tier2", "high", "billing", ""),
        ("Rate limit hit below documented quota", "tier2", "normal", "technical", ""),
        ("Audit log missing entries for May", "tier2", "normal", "technical", ""),
    ]
    return [
        Ticket(
            title=title,
            description=f"Customer report: {title.lower()}.",
            team=team,
            priority=priority,
            category=category,
            assignee=assignee,
            status="in_progress" if assignee else "open",
            created_by="seed",
        )
        for title, team, priority, category, assignee in rows
    ]


async def _demo_accounts(encrypt_pii: Encrypt) -> list[Account]:
    rows = [
        (
            "Acme Corp",
            "enterprise",
            "eu",
            "enterprise",
            "billing@acme.example",
            "+44 20 7946 0001",
            1_250_000,
        ),
        ("Globex", "pro", "us", "smb", "ap@globex.example", "+1 555 0100", 48_000),
        ("Initech", "pro", "us", "smb", "finance@initech.example", "+1 555 0199", 12_500),
        (
            "Umbrella Health",
            "enterprise",
            "apac",
            "enterprise",
            "ops@umbrella.example",
            "+61 2 5550 1234",
            990_000,
        ),
        ("Hooli Labs", "free", "eu", "smb", "hello@hooli.example", "+49 30 5550 7788", 0),
    ]
    contacts = await encrypt_pii([text for row in rows for text in (row[4], row[5])])
    return [
        Account(
            name=name,
            plan=plan,
            region=region,
            segment=segment,
            email=contacts[2 * i],
            phone=contacts[2 * i + 1],
            email_masked=mask_email(email),
            phone_masked=mask_phone(phone),
            balance_cents=balance,
        )
        for i, (name, plan, region, segment, email, phone, balance) in enumerate(rows)
    ]
