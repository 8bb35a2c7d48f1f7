"""The DNS-rebinding guard: which ``Host`` and ``Origin`` headers a request may carry.

FastMCP's guard checks both, but lets any loopback origin through while the server is reached on
loopback: a page on ``http://localhost:6666`` (any local program, or a page a browser was lured
to) could then drive a server on ``http://localhost:8000`` with the user's browser. Origins on
other ports are other origins. Here an ``Origin`` passes only when it is

- the origin of the request itself (scheme and ``Host``, which the guard has already checked
  against loopback names, the bound address and ``MCP_ALLOWED_HOSTS``),
- the server's own base URL (``MCP_PUBLIC_BASE_URL``, else ``http://MCP_HOST:PORT``), or
- listed in ``MCP_ALLOWED_ORIGINS``.

A foreign ``Origin`` gets 403, a foreign ``Host`` 421. Requests without ``Origin`` (every
non-browser client, MCP Inspector's proxy and backend included) are not affected.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from fastmcp.server.http import HostOriginGuardMiddleware, _normalize_origin, _origin_matches
from starlette.types import ASGIApp


class OriginGuard(HostOriginGuardMiddleware):
    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Sequence[str],
        allowed_origins: Sequence[str],
        own_origin: str,
    ) -> None:
        # "strict": validate every request, whatever address the server is bound to.
        super().__init__(
            app, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins, mode="strict"
        )
        url = urlsplit(own_origin)
        self.own_origin = _normalize_origin(f"{url.scheme}://{url.netloc}")

    def _origin_allowed(
        self,
        origin: str,
        request_origin: str,
        host: str,
        allow_same_origin_fallback: bool,
    ) -> bool:
        """Replaces FastMCP's rule, which also admits every loopback origin."""
        if _origin_matches(origin, self.allowed_origins):
            return True
        return _normalize_origin(origin) in (request_origin, self.own_origin)
