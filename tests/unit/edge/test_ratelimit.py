"""The per-principal token bucket: refills at its rate, one bucket per principal, bounded."""

from __future__ import annotations

import pytest

from server.edge.ratelimit import RateLimiter


def test_the_bucket_refills_at_the_configured_rate() -> None:
    limiter = RateLimiter(per_second=2, burst=2)
    assert limiter.retry_after("p", now=0) == 0
    assert limiter.retry_after("p", now=0) == 0
    assert limiter.retry_after("p", now=0) == pytest.approx(0.5)
    assert limiter.retry_after("q", now=0) == 0  # another principal has its own bucket
    assert limiter.retry_after("p", now=0.5) == 0


def test_the_limiter_forgets_idle_principals_beyond_its_bound() -> None:
    limiter = RateLimiter(per_second=1, burst=1, max_principals=3)
    for key in "abcde":
        limiter.retry_after(key, now=0)
    assert len(limiter._buckets) == 3
