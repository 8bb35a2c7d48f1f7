"""Per-principal rate limiting: one caller flooding the server cannot starve the others.

A token bucket per principal id, in process memory (one replica; put a shared limiter in front
for several). Checked before any authorization work, so a flood never reaches the PDP.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_second: float, burst: int, *, max_principals: int = 10_000) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("rate limit needs per_second > 0 and burst >= 1")
        self.per_second = per_second
        self.burst = burst
        self.max_principals = max_principals
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Take one token for ``key``: 0.0 if allowed, else seconds until a token is free."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), updated=now)
            if len(self._buckets) > self.max_principals:
                self._buckets.popitem(last=False)  # the longest idle caller
        else:
            bucket.tokens = min(
                self.burst, bucket.tokens + (now - bucket.updated) * self.per_second
            )
            bucket.updated = now
            self._buckets.move_to_end(key)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.per_second
