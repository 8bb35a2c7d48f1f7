"""The token bucket of both edge limits: refills at its rate, one bucket per key, bounded, and a
token given back is free again."""

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
    limiter = RateLimiter(per_second=1, burst=1, max_keys=3)
    for key in "abcde":
        limiter.retry_after(key, now=0)
    assert len(limiter._buckets) == 3


def test_a_token_given_back_is_free_again_but_the_bucket_never_overflows() -> None:
    limiter = RateLimiter(per_second=1, burst=2)
    assert limiter.retry_after("p", now=0) == 0
    assert limiter.retry_after("p", now=0) == 0
    limiter.give_back("p")
    assert limiter.retry_after("p", now=0) == 0
    assert limiter.retry_after("p", now=0) > 0
    for _ in range(5):
        limiter.give_back("p")
    assert [limiter.retry_after("p", now=0) for _ in range(3)][-1] > 0  # burst 2, not 5
    limiter.give_back("unknown")  # nothing taken, nothing to return
    assert "unknown" not in limiter._buckets
