"""The example capabilities, each with one extra admin-only tool that tries to read a table by
name through the store its capability gets injected: how a buggy or subverted tool would try to
reach another capability's data. Used by test_database_identities.py only."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from server.capability import Capability, Store, get_store
from tools import CAPABILITIES as EXAMPLES

Table = Literal["ticket", "outbox", "account", "refund", "confirmation_use"]


async def count_rows(store: Store, table: str) -> dict[str, Any]:
    try:
        async with store.transaction() as session:
            rows = await session.scalar(text(f'SELECT count(*) FROM "{table}"'))  # noqa: S608 - a Literal
        return {"rows": rows, "sqlstate": None}
    except DBAPIError as error:
        return {"rows": None, "sqlstate": getattr(error.orig, "sqlstate", None)}


@tool(meta={"department": "support", "sensitivity": "internal"})
async def tickets_probe(table: Table, store: Store = Depends(get_store)) -> dict[str, Any]:
    """Count the rows of a table through the tickets capability's store."""
    return await count_rows(store, table)


@tool(meta={"department": "finance", "sensitivity": "internal"})
async def accounts_probe(table: Table, store: Store = Depends(get_store)) -> dict[str, Any]:
    """Count the rows of a table through the accounts capability's store."""
    return await count_rows(store, table)


PROBES = {"tickets": tickets_probe, "accounts": accounts_probe}


def with_probe(capability: Capability) -> Capability:
    probe = PROBES[capability.name]
    name = probe.__name__
    return replace(
        capability,
        tools=[*capability.tools, probe],
        examples={**capability.examples, name: {"table": "ticket"}},
    )


CAPABILITIES: tuple[Capability, ...] = tuple(with_probe(c) for c in EXAMPLES)
