"""The HTTP edge: cheap refusals before any MCP, authentication or authorization work.

``RequestLimits`` bounds the body size and the JSON nesting depth of every request. Both are
checked on the raw bytes, so a hostile body costs at most one bounded scan and never reaches a
recursive parser. The scan is linear in the body's size whatever its content: it runs in the event
loop, before authentication, so a super-linear step here would let one unauthenticated request
stall every other caller.
"""

from __future__ import annotations

import itertools
import re
from typing import Final

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
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


class RequestLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _refuse(send, 413, "request body too large")
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

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


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
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
