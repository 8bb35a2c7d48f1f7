"""Request bodies at the HTTP edge: how large, how deeply nested, and read only when it is safe.

Two places along the edge (server/app.py has the whole order):

- ``DeclaredSizeLimit``, before authentication, refuses a request whose ``Content-Length``
  header already says it is too large: a header comparison, nothing read.
- ``BodyLimits``, after authentication and the per-principal limit, reads the body of an
  authenticated request up to the size limit and checks its JSON nesting depth on the raw bytes,
  so a hostile body costs at most one bounded scan and never reaches a recursive parser. The app
  never sees the body of a request that did not authenticate.

The depth scan is linear in the body's size whatever its content: it runs in the event loop, so
a super-linear step here would let one request stall every other caller.
"""

from __future__ import annotations

import itertools
import re
from typing import Final

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A JSON string, or an unterminated one up to the end of the body. Possessive quantifiers never
# backtrack, and every match attempt that starts at a quote succeeds (the string runs to its
# closing quote or to the end), so no byte is scanned twice: linear even for bodies made of
# escapes and unterminated strings, which made the former, backtracking pattern quadratic.
_JSON_STRING: Final = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(body: bytes) -> int:
    """Maximum nesting depth of a JSON document (brackets inside strings do not count)."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets), initial=0))


class DeclaredSizeLimit:
    """Before authentication: 413 for a declared ``Content-Length`` beyond the limit."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                await _refuse(send, 413, "request body too large")
                return
        await self.app(scope, receive, send)


class BodyLimits:
    """After authentication: read the body up to the size limit, then check its depth.

    A request that did not authenticate passes on without its body: the route answers it (401
    from the MCP endpoint) and the app never reads a byte of it.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        if not isinstance(scope.get("user"), AuthenticatedUser):
            await self.app(scope, _without_body(receive), send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _refuse(send, 413, "request body too large")
                return
            if not message.get("more_body", False):
                break
        if json_depth(bytes(body)) > self.max_json_depth:
            await _refuse(send, 400, "JSON nested too deeply")
            return
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _without_body(receive: Receive) -> Receive:
    """The request as an empty body; afterwards only the disconnect of the original stream."""
    return _replay(b"", _disconnect_only(receive))


def _disconnect_only(receive: Receive) -> Receive:
    async def wait_for_disconnect() -> Message:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return message

    return wait_for_disconnect


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, status: int, reason: str) -> None:
    body = ('{"error": "' + reason + '"}').encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 413:
        # Do not keep the connection to read (and drop) the rest of an oversized body.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
