"""Which store each capability gets.

- **SQLite** (the zero-setup default) is a single-identity store: one file, one engine, shared
  by every capability. Whoever can open the file can read every table in it.
- **PostgreSQL**: one store per capability, each connecting as that capability's own
  short-lived database user (``server.store.credentials``), whose grants reach that
  capability's tables only (plus the runtime's shared tables, see ``ops.vault_plan``).

Tools never choose: ``get_store`` hands a tool the store of the capability that registered it
(``server.capability.scope``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Table
from sqlalchemy.engine import make_url

from server.store.core import Store


def is_single_identity(url: str) -> bool:
    """SQLite has no users: the whole file is one identity."""
    return make_url(url).get_backend_name() == "sqlite"


@dataclass
class Stores:
    """The store of every capability that owns tables (several names may share one store)."""

    by_capability: Mapping[str, Store]

    def of(self, capability: str) -> Store:
        try:
            return self.by_capability[capability]
        except KeyError:
            raise LookupError(f"capability {capability!r} declares no tables: no store") from None

    def distinct(self) -> Iterator[tuple[str, Store]]:
        """Each store once, with the first capability that uses it."""
        seen: set[int] = set()
        for name, store in self.by_capability.items():
            if id(store) not in seen:
                seen.add(id(store))
                yield name, store

    async def start(self, tables: Mapping[str, Sequence[Table]], shared: Sequence[Table]) -> None:
        """Start every store; each checks (or, single-identity, creates) the tables it uses:
        its capability's and the shared ones."""
        for _, store in self.distinct():
            users = [n for n, s in self.by_capability.items() if s is store]
            mine = [t for name in users for t in tables.get(name, ())]
            await store.start(tables=[*shared, *mine])

    async def close(self) -> None:
        for _, store in self.distinct():
            await store.close()
