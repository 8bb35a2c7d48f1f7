"""The store core: one SQLAlchemy engine (SQLite by default, PostgreSQL in production), one
transaction per unit of work, and the declarative base every capability's tables derive from.

The tables themselves belong to the capabilities (``tools/<name>/models.py``); the store creates
the tables of the registered capabilities and nothing else. Columns that policies read must be
NOT NULL: SQL NULL semantics are stricter than the policy language's, and a query filter derived
from a policy must select exactly the rows a per-row decision would allow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from fastmcp.exceptions import ToolError
from pydantic import SecretStr
from sqlalchemy import Table, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm.exc import StaleDataError

from server.telemetry import sql as sql_tracing


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class RecordChanged(ToolError):
    """A concurrent write won: this one was rolled back."""


class Base(DeclarativeBase):
    pass


class Store:
    """Owns the engine; hands out one session (and transaction) per unit of work."""

    def __init__(self, url: str, *, pool_size: int = 20, statement_spans: bool = False) -> None:
        self.url = url
        # Connections kept open. A tool holds one for its whole transaction, PDP round trip
        # included, so the pool must cover the requests in flight: past it, every extra
        # connection is opened and closed again per use (for SQLite, a thread each time).
        self.pool_size = pool_size
        self.statement_spans = statement_spans
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("store not started")
        return self._engine

    async def start(self, *, tables: Sequence[Table], password: SecretStr | None = None) -> None:
        """Connect and create ``tables`` where they do not exist yet.

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
            engine = create_async_engine(
                url, connect_args={"timeout": 15}, pool_size=self.pool_size
            )
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(url, pool_pre_ping=True, pool_size=self.pool_size)
        if self.statement_spans:
            sql_tracing.instrument(engine)
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all, tables=list(tables))

    async def seed_if_empty(
        self, tables: Sequence[Table], rows: Callable[[], Awaitable[Sequence[object]]]
    ) -> bool:
        """Add ``rows()`` when every one of ``tables`` is empty; True if it did.

        ``rows`` is only called then: demo data that needs Vault (encrypted columns) costs nothing
        on a store that already has data.
        """
        async with self.transaction() as session:
            for table in tables:
                if await session.scalar(select(func.count()).select_from(table)):
                    return False
            session.add_all(await rows())
        return True

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


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
