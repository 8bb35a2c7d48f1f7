"""Liveness and readiness, unauthenticated and revealing nothing but "ready or not, and which
dependency is down" (no versions, no addresses, no error text).

- ``/livez``: the process serves HTTP. Always 200 while it does.
- ``/readyz``: 200 only when the server finished starting and, checked concurrently, each
  within a short deadline:

  - ``pdp``: the PDP answers its gRPC health check as SERVING;
  - ``vault``: every Vault identity holds a token it may use now (no Vault request unless a
    token is due to be re-minted);
  - ``database``: every store answers ``SELECT 1`` with its current login (on PostgreSQL each
    capability's login; re-issued first only when due).

  Otherwise 503, with each dependency ``ok`` or ``down``.
- ``/healthz``: the same as ``/readyz`` (kept for existing health checks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.store.core import StoreUnavailable

if TYPE_CHECKING:
    from server.runtime import Runtime

log = logging.getLogger(__name__)

# The slowest a check may take; a dependency slower than this is reported down.
CHECK_BOUND_SECONDS: Final = 3.0


async def _bounded(check: Awaitable[bool], bound: float) -> bool:
    try:
        async with asyncio.timeout(bound):
            return await check
    except TimeoutError:
        return False
    except Exception:  # a probe reports, it never raises; the reason goes to the log only
        log.warning("readiness check failed", exc_info=True)
        return False


async def _database(runtime: Runtime) -> bool:
    try:
        for _, store in runtime.stores.distinct():
            await store.ping()
    except StoreUnavailable:
        return False
    return True


async def readiness(runtime: Runtime) -> dict[str, bool]:
    settings = runtime.settings
    pdp, vault, database = await asyncio.gather(
        _bounded(runtime.pdp.serving(), min(CHECK_BOUND_SECONDS, settings.pdp_timeout_seconds * 2)),
        _bounded(runtime.identities.usable(), CHECK_BOUND_SECONDS),
        _bounded(_database(runtime), CHECK_BOUND_SECONDS),
    )
    return {"pdp": pdp, "vault": vault, "database": database}


def _answer(ready: bool, checks: Mapping[str, str]) -> Response:
    return JSONResponse(
        {"ready": ready, "checks": dict(checks)},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


def probes(
    runtime: Runtime, started: Callable[[], bool]
) -> dict[str, Callable[[Request], Awaitable[Response]]]:
    """The probe endpoints, by path, for ``runtime``; ``started`` tells whether startup ended."""

    async def livez(_: Request) -> Response:
        return JSONResponse({"live": True}, headers={"Cache-Control": "no-store"})

    async def readyz(_: Request) -> Response:
        if not started():
            return _answer(False, {"startup": "pending"})
        checks = await readiness(runtime)
        return _answer(
            all(checks.values()), {name: "ok" if up else "down" for name, up in checks.items()}
        )

    return {"/livez": livez, "/readyz": readyz, "/healthz": readyz}
