"""A short-lived cache of *component* decisions: the tool gate and list filtering.

Whether a principal may call or list a tool depends only on what the PDP is sent: the verified
principal (id, roles, every policy attribute) and the component's server-side declaration (kind,
name, attributes), plus the action. The key is exactly those inputs, so two requests share an
entry only when the PDP would have been asked the very same question.

What bounds an entry:

- ``ttl_seconds`` (``MCP_AUTHZ_CACHE_SECONDS``, at most a second by default; 0 turns the cache
  off). The PDP does not say which policy revision made a decision, so a policy change cannot
  flush the cache: a revoked permission is refused at most ``ttl_seconds`` after the PDP itself
  has reloaded the policy (Cerbos' disk watcher takes about two seconds on its own).
- the expiry of the token the decision was made for: no entry outlives it.
- the PDP: the client reads no entry while its channel is not ready, and flushes every entry when
  a PDP request fails, so a dead PDP denies at once and a hung one within ``ttl_seconds``.

Record-level decisions (this ticket, that account) are never cached here: they depend on the row.
A hit is still a traced decision: an event naming the PDP call the decision came from.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.authz.decisions import ResourceDecision, ResourceRef
from server.edge.principal import Principal

Key = tuple[Hashable, ...]


@dataclass(frozen=True)
class CachedDecision:
    decision: ResourceDecision
    request_id: str  # the request whose PDP call made the decision
    decided_at: float  # time.monotonic() when the PDP answered
    expires_at: float  # time.monotonic() deadline

    def age_ms(self, now: float) -> float:
        return round((now - self.decided_at) * 1000, 3)


class DecisionCache:
    def __init__(self, ttl_seconds: float, *, max_entries: int = 10_000) -> None:
        if ttl_seconds < 0 or max_entries < 1:
            raise ValueError("ttl_seconds must be >= 0 and max_entries >= 1")
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[Key, CachedDecision] = {}
        self.hits = 0
        self.misses = 0
        self.flushes = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    @staticmethod
    def key(principal: Principal, ref: ResourceRef, actions: Sequence[str]) -> Key:
        """Every input of the decision: the principal as sent, the resource as sent, the actions."""
        return (
            _principal_key(principal),
            ref.kind,
            ref.id,
            _frozen_attributes(ref.attributes),
            tuple(actions),
        )

    def get(self, key: Key, now: float) -> CachedDecision | None:
        entry = self._entries.get(key)
        if entry is not None and now < entry.expires_at:
            self.hits += 1
            return entry
        if entry is not None:
            del self._entries[key]
        self.misses += 1
        return None

    def put(
        self,
        key: Key,
        decision: ResourceDecision,
        *,
        request_id: str,
        now: float,
        valid_until: float | None,
    ) -> None:
        """Keep ``decision`` for ``ttl_seconds``, and never past ``valid_until`` (epoch seconds:
        the expiry of the token it was made for)."""
        expires_at = now + self.ttl_seconds
        if valid_until is not None:
            expires_at = min(expires_at, now + (valid_until - time.time()))
        if expires_at <= now:
            return
        if len(self._entries) >= self.max_entries:
            self._make_room(now)
        self._entries[key] = CachedDecision(decision, request_id, now, expires_at)

    def _make_room(self, now: float) -> None:
        for key in [k for k, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[key]
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest insertion

    def flush(self) -> None:
        if self._entries:
            self._entries.clear()
        self.flushes += 1

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "flushes": self.flushes,
            "entries": len(self._entries),
        }


@functools.lru_cache(maxsize=4096)
def _principal_key(principal: Principal) -> Key:
    # Principals are immutable, and one object serves every request of a token.
    return (principal.id, principal.roles, _frozen(principal.policy_attributes()))


def _frozen_attributes(attributes: Mapping[str, Any]) -> Hashable:
    """``_frozen`` of an attribute mapping, with a fast path for what components carry: strings,
    booleans, numbers, None and lists of strings (a list of tags is built per request)."""
    items: list[tuple[str, Hashable]] = []
    for key, value in attributes.items():
        kind = type(value)
        if kind is str or kind is int or value is None:
            items.append((str(key), value))
        elif kind is list and all(type(v) is str for v in value):
            items.append((str(key), tuple(value)))
        else:
            items.append((str(key), _frozen(value)))
    items.sort(key=_name)
    return tuple(items)


def _name(item: tuple[str, Hashable]) -> str:
    return item[0]


def _frozen(value: Any) -> Hashable:
    """A hashable, order-insensitive (for mappings) copy of a JSON-like value."""
    kind = type(value)
    if kind is str or kind is int or value is None:  # the common cases first: keys are hot
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return ("bool", value)  # True == 1 as dict keys; the PDP tells them apart
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"  # NaN != NaN would make the entry unreachable, not wrong
    return value  # type: ignore[no-any-return]
