"""The DNS-rebinding guard: only the request's own origin, the server's base URL and configured
origins pass; loopback origins on other ports are foreign (a local page is not this server)."""

from __future__ import annotations

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from server.edge.origin import OriginGuard

SERVER = "http://127.0.0.1:8000"


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def guard(**options: object) -> OriginGuard:
    settings: dict[str, object] = {
        "allowed_hosts": [],
        "allowed_origins": [],
        "own_origin": SERVER,
        **options,
    }
    return OriginGuard(ok, **settings)  # type: ignore[arg-type]


async def status(
    app: OriginGuard, origin: str | None, url: str = SERVER + "/mcp", host: str | None = None
) -> int:
    headers = {"Origin": origin} if origin is not None else {}
    if host is not None:
        headers["Host"] = host
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        return (await client.post(url, headers=headers)).status_code


async def test_a_request_without_origin_passes() -> None:
    assert await status(guard(), None) == 200


async def test_the_requests_own_origin_passes() -> None:
    assert await status(guard(), SERVER) == 200
    assert await status(guard(), "http://localhost:8000", "http://localhost:8000/mcp") == 200


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:6274",  # e.g. a local web app (or MCP Inspector's page) on another port
        "http://127.0.0.1:6274",
        "http://[::1]:8000",  # loopback, but not the host the request was sent to
        "http://localhost:8000",
        "https://127.0.0.1:8000",  # another scheme is another origin
        "http://127.0.0.1",
        "null",
        "https://evil.example",
    ],
)
async def test_any_other_origin_is_refused_loopback_included(origin: str) -> None:
    assert await status(guard(), origin) == 403


async def test_configured_origins_pass() -> None:
    app = guard(allowed_origins=["http://localhost:6274", "https://*.corp.example"])
    assert await status(app, "http://localhost:6274") == 200
    assert await status(app, "https://tools.corp.example") == 200
    assert await status(app, "http://localhost:6275") == 403


async def test_the_public_base_url_is_the_servers_own_origin() -> None:
    """Behind a proxy the request reaches the server on an internal address; browsers send the
    public origin."""
    app = guard(own_origin="https://mcp.example.com/some/prefix")
    assert await status(app, "https://mcp.example.com") == 200
    assert await status(app, "https://mcp.example.com:8443") == 403


async def test_a_foreign_host_is_refused() -> None:
    assert await status(guard(), None, host="evil.example:8000") == 421
    # A rebinding page names its own host; its origin then matches that Host, which is why the
    # Host check comes first.
    assert await status(guard(), "http://evil.example:8000", host="evil.example:8000") == 421
