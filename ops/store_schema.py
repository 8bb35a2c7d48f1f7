"""Create the registered capabilities' tables in PostgreSQL, as the database's owner login.

On PostgreSQL the server never holds DDL rights: its logins (one per capability, from Vault)
may only read and write rows. The tables are created here, by the bootstrap, with the owner's
login an operator hands over as a file; they belong to that owner, and Vault (with the same
login) grants each capability's short-lived users their rows' privileges. Re-running creates
only what is missing, like ``make generate`` for policies: a new capability's tables appear the
next time the bootstrap runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import Table, inspect
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from server.store.core import Base


def create_tables(
    *, host: str, port: int, database: str, user: str, password: str, tables: Sequence[Table]
) -> list[str]:
    """Create the missing ``tables``; returns the names of those it created."""
    return asyncio.run(
        _create(
            URL.create(
                "postgresql+asyncpg",
                username=user,
                password=password,
                host=host,
                port=port,
                database=database,
            ),
            tables,
        )
    )


async def _create(url: URL, tables: Sequence[Table]) -> list[str]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            existing = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
            await conn.run_sync(Base.metadata.create_all, tables=list(tables))
        return [t.name for t in tables if t.name not in existing]
    finally:
        await engine.dispose()
