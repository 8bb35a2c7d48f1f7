"""Rate limits at the HTTP edge: token buckets, and the two places where they refuse.

- ``AddressThrottle`` runs before authentication, keyed by the client address. Every request
  takes a token from its address's bucket; a request that then authenticates gives it back
  (``PrincipalThrottle`` does that). What the bucket bounds is therefore the work spent on
  requests that do not authenticate: past the limit they are refused before any token
  verification, while authenticated callers sharing the address (a NAT, a proxy) are unaffected
  as long as the failures stay within the limit.
- ``PrincipalThrottle`` runs right after authentication, keyed by the principal id, before the
  body is read or any MCP work: a throttled principal costs one token verification (a cache
  lookup for a token seen recently) and a dictionary lookup.

Both refuse with HTTP 429, a ``Retry-After`` header (whole seconds, rounded up) and a JSON-RPC
error body with ``id: null``, code ``RATE_LIMITED`` and ``data.retry_after_seconds``. MCP SDK
clients surface that body as the error of the request they sent (the body is not read, so its id
is not known here); plain HTTP clients see the status and the header.

The buckets live in process memory: one replica. With several, put a shared limiter in front.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.types import ASGIApp, Receive, Scope, Send

from server.authz import tracing

# JSON-RPC error code of a throttled request (implementation-defined server range).
RATE_LIMITED: Final = -32029


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key, refilled at ``per_second`` up to ``burst``; bounded in keys."""

    def __init__(self, per_second: float, burst: int, *, max_keys: int = 10_000) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("rate limit needs per_second > 0 and burst >= 1")
        self.per_second = per_second
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Take one token for ``key``: 0.0 if allowed, else seconds until a token is free."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), updated=now)
            if len(self._buckets) > self.max_keys:
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

    def give_back(self, key: str) -> None:
        """Return the token a request took (it turned out not to count against this limit)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + 1)


def client_address(scope: Scope) -> str:
    """The key of the per-address limit: the peer as the ASGI server reports it.

    That is the direct peer unless the app rewrote it from the forwarded headers of a trusted
    proxy (``MCP_TRUSTED_PROXIES``). Without a peer (a unix socket) every caller shares one key.
    """
    client = scope.get("client")
    return str(client[0]) if client else ""


class AddressThrottle:
    """Before authentication: refuse an address that sent too many unauthenticated requests."""

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            wait = self.limiter.retry_after(client_address(scope))
            if wait > 0:
                tracing.refuse_request("rate_limited")
                await too_many_requests(send, wait, "Too many unauthenticated requests")
                return
        await self.app(scope, receive, send)


class PrincipalThrottle:
    """After authentication, before the body or MCP: refuse a principal over its limit.

    An authenticated request first gives the address bucket back its token.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter | None,
        address_limiter: RateLimiter | None,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.address_limiter = address_limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user") if scope["type"] == "http" else None
        if isinstance(user, AuthenticatedUser):
            if self.address_limiter is not None:
                self.address_limiter.give_back(client_address(scope))
            # The verifier admits only tokens whose `sub` is a valid principal id.
            principal_id = user.access_token.subject or ""
            wait = self.limiter.retry_after(principal_id) if self.limiter is not None else 0.0
            if wait > 0:
                tracing.refuse_request("rate_limited", principal_id)
                await too_many_requests(send, wait, "Rate limit exceeded for this caller")
                return
        await self.app(scope, receive, send)


async def too_many_requests(send: Send, wait: float, message: str) -> None:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": RATE_LIMITED,
                "message": f"{message}: retry in {wait:.1f} s",
                "data": {"retry_after_seconds": round(wait, 3)},
            },
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(max(1, math.ceil(wait))).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
