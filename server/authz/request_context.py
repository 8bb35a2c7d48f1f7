"""Per-request context: who is calling and the request id that ties logs, spans and PDP audit.

Set by the authorization middleware for the duration of one MCP request, read by tools through
dependency injection. A ``ContextVar`` follows the request into sync tools run in worker
threads and cannot leak between concurrent requests.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, replace

from server.edge.principal import Principal


@dataclass(frozen=True)
class RequestInfo:
    request_id: str
    principal: Principal | None
    # The component the request names, as sent (tool or prompt name, resource URI), once the
    # authorization middleware has read it.
    target: str = ""
    # Epoch seconds after which the caller's credential (its token's `exp`) is no longer valid;
    # None where there is no token (stdio). Nothing derived from it may be kept longer.
    valid_until: float | None = None


_current: ContextVar[RequestInfo | None] = ContextVar("mcp_request", default=None)


def current_request() -> RequestInfo | None:
    return _current.get()


def current_principal() -> Principal:
    """The authorized caller of the running tool. Raises if called outside an authorized request."""
    info = _current.get()
    if info is None or info.principal is None:
        raise LookupError("no authorized principal in this context")
    return info.principal


def bind_request(info: RequestInfo) -> object:
    return _current.set(info)


def bind_target(target: str) -> None:
    """Record the component the current request names (reset with the request's binding)."""
    info = _current.get()
    if info is not None:
        _current.set(replace(info, target=target))


def current_target() -> str:
    info = _current.get()
    return info.target if info is not None else ""


def unbind_request(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
