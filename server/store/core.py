"""The store core: a SQLAlchemy engine (SQLite by default, PostgreSQL in production), one
transaction per unit of work, and the declarative base every capability's tables derive from.

The tables themselves belong to the capabilities (``tools/<name>/models.py``). On SQLite the one
store creates the registered capabilities' tables; on PostgreSQL each capability has a store of
its own that logs in with that capability's short-lived database user (``credentials.py``,
``stores.py``) and only uses tables the bootstrap created. Columns that policies read must be
NOT NULL: SQL NULL semantics are stricter than the policy language's, and a query filter derived
from a policy must select exactly the rows a per-row decision would allow.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from fastmcp.exceptions import ToolError
from sqlalchemy import Table, event, func, literal, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm.exc import StaleDataError

from server.telemetry import sql as sql_tracing

if TYPE_CHECKING:
    from server.store.credentials import DatabaseLogin


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class RecordChanged(ToolError):
    """A concurrent write won: this one was rolled back. An answer (retry), not a failure: one
    log line at INFO."""

    def __init__(self, message: str) -> None:
        super().__init__(message, log_level=logging.INFO)


class Base(DeclarativeBase):
    pass


class StoreUnavailable(ToolError):
    """The store cannot be reached with a valid login right now; nothing was changed."""

    def __init__(self) -> None:
        super().__init__("The data store is unavailable: nothing was changed; try again shortly.")


class LoginSource(Protocol):
    """Where a store gets its short-lived database login (``server.store.credentials``)."""

    async def current(self) -> DatabaseLogin: ...


@dataclass(eq=False)
class _Engine:
    """One engine per database login: connections of a superseded login are closed once the
    transactions still using them have ended."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    generation: int
    in_use: int = 0


class Store:
    """Owns the engine; hands out one session (and transaction) per unit of work.

    With ``login`` (PostgreSQL: one store per capability), the engine connects as the
    capability's own short-lived database user and is replaced whenever the login is
    re-issued; a store whose login has expired and cannot be re-issued refuses to open a
    transaction (``StoreUnavailable``), so nothing is changed. Without it (SQLite, a
    single-identity store) the URL is used as it is.

    ``clock`` is the store's time (naive UTC, as stored): what rows are stamped with and what
    "today" means for limits summed per day. Tests replace it to move to another day.
    """

    def __init__(
        self,
        url: str,
        *,
        login: LoginSource | None = None,
        timeout_seconds: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
        pool_size: int = 20,
        statement_spans: bool = False,
    ) -> None:
        self.url = url
        self.login = login
        # Connections kept open. A tool holds one for its whole transaction, PDP round trip
        # included, so the pool must cover the requests in flight: past it, every extra
        # connection is opened and closed again per use (for SQLite, a thread each time).
        self.pool_size = pool_size
        self.statement_spans = statement_spans
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self._current: _Engine | None = None
        self._retired: list[_Engine] = []
        self._started = False
        self._switch = asyncio.Lock()

    def now(self) -> datetime:
        """The store's current time, naive UTC."""
        return self.clock()

    @property
    def engine(self) -> AsyncEngine:
        if self._current is None:
            raise RuntimeError("store not started")
        return self._current.engine

    async def start(self, *, tables: Sequence[Table]) -> None:
        """Connect, and make sure ``tables`` are there.

        Without a login (SQLite) the store creates the tables that do not exist yet. With one,
        the tables belong to the database's owner (the bootstrap creates them) and this store's
        user may only use them: each one is checked to be there and granted, so a missing
        table or grant stops startup with its name, not the first call.
        """
        self._started = True
        current = await self._engine_now()
        if self.login is None:
            async with current.engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all, tables=list(tables))
            return
        async with current.engine.connect() as conn:
            for table in tables:
                try:
                    await conn.execute(select(literal(1)).select_from(table).limit(0))
                except DBAPIError:
                    raise StoreNotPrepared(
                        f"table {table.name!r} is missing or not granted to this store's "
                        "database role: run the bootstrap with the database owner's login "
                        "(python -m ops vault-bootstrap --database-admin-file ...)"
                    ) from None
                finally:
                    await conn.rollback()

    def _make_engine(self, login: DatabaseLogin | None) -> _Engine:
        url = make_url(self.url)
        if login is not None:
            url = url.set(username=login.username, password=login.password)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            # SQLite has one writer at a time; a write (a change plus its signed outbox row) waits
            # up to 15 s for the lock under bursts of concurrent writers instead of failing.
            engine = create_async_engine(
                url, connect_args={"timeout": 15}, pool_size=self.pool_size
            )
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(
                url,
                pool_pre_ping=True,
                pool_size=self.pool_size,
                connect_args={"timeout": self.timeout_seconds},
            )
        if self.statement_spans:
            sql_tracing.instrument(engine)
        generation = login.lease.generation if login is not None else 0
        return _Engine(engine, async_sessionmaker(engine, expire_on_commit=False), generation)

    async def _engine_now(self) -> _Engine:
        """The engine of the current login, re-issued first when it is due."""
        if not self._started:
            raise RuntimeError("store not started")
        if self.login is None:
            if self._current is None:
                self._current = self._make_engine(None)
            return self._current
        try:
            login = await self.login.current()
        except ToolError:
            # Vault could not issue a login and none is usable: fail closed, change nothing.
            raise StoreUnavailable() from None
        current = self._current
        if current is not None and current.generation == login.lease.generation:
            return current
        async with self._switch:
            current = self._current
            if current is not None and current.generation == login.lease.generation:
                return current
            fresh = self._make_engine(login)
            self._current = fresh
            if current is not None:
                self._retired.append(current)
                await self._dispose_idle()
            return fresh

    async def _dispose_idle(self) -> None:
        idle = [e for e in self._retired if e.in_use == 0]
        self._retired = [e for e in self._retired if e.in_use > 0]
        for engine in idle:
            await engine.engine.dispose()

    async def seed_if_empty(
        self, tables: Sequence[Table], rows: Callable[[], Awaitable[Sequence[object]]]
    ) -> bool:
        """Add ``rows()`` when every one of ``tables`` is empty; True if it did.

        ``rows`` is only called then: demo data that needs Vault (encrypted columns) costs nothing
        on a store that already has data.

        Replicas starting together on one PostgreSQL database would each find the tables empty
        and each add the rows: the check and the insert run under a transaction-level advisory
        lock named after the tables, so the second replica waits and then finds them filled.
        (SQLite has one writer and one server process.)
        """
        async with self.transaction() as session:
            if session.get_bind().dialect.name == "postgresql":
                await session.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(tables)}
                )
            for table in tables:
                if await session.scalar(select(func.count()).select_from(table)):
                    return False
            session.add_all(await rows())
        return True

    async def ping(self) -> None:
        """``SELECT 1`` with this store's current login, within ``timeout_seconds``.

        Raises ``StoreUnavailable`` when the login cannot be had or the database does not answer.
        """
        try:
            async with asyncio.timeout(self.timeout_seconds):
                current = await self._engine_now()
                async with current.engine.connect() as conn:
                    await conn.execute(select(literal(1)))
        except (TimeoutError, OSError, DBAPIError):
            raise StoreUnavailable() from None

    async def close(self) -> None:
        engines = [*self._retired, *([self._current] if self._current else [])]
        self._current, self._retired, self._started = None, [], False
        for engine in engines:
            await engine.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: commit on success, roll back on any error."""
        current = await self._engine_now()
        current.in_use += 1
        try:
            async with current.sessions() as session, session.begin():
                yield session
        except StaleDataError:
            # The row's version moved between our read (and authorization) and our write.
            raise RecordChanged(
                "The record changed while this request was being decided; nothing was saved. "
                "Read it again and retry."
            ) from None
        finally:
            current.in_use -= 1
            if current is not self._current and current.in_use == 0:
                await self._dispose_idle()


def _lock_key(tables: Sequence[Table]) -> int:
    """A signed 64-bit advisory-lock key for a set of tables (the same on every replica)."""
    names = ",".join(sorted(t.name for t in tables))
    digest = hashlib.sha256(f"seed:{names}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StoreNotPrepared(RuntimeError):
    """The database lacks a table or a grant this store needs: startup stops."""


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
