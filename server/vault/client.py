"""Talking to Vault (or OpenBao: both speak the same HTTP API) safely.

- Every hvac client is built here, with an explicit ``token=`` (hvac otherwise picks up
  ``VAULT_TOKEN`` or ``~/.vault-token`` on its own) and a short timeout (hvac's default is 30 s).
- Every HTTP request a client sends is recorded in a ``VaultRequestLog`` (who, method, path,
  status; never a value or a token), so "0 Vault requests per tool call" is counted, not assumed.
- Every failure is mapped to one of a few reasons and raised as ``SecretsUnavailable``, whose
  message is fixed text: the caller learns that secrets were unavailable and that nothing was
  changed, never a token, a value or hvac's own error text. Vault answers 403 both for "denied by
  policy" and for "token expired", so the callers here re-authenticate once before treating a
  403 as a denial.
- Every operation runs in an OpenTelemetry span whose attributes are the path, the identity and
  the operation, never a value.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import hvac
import hvac.exceptions
import requests
from fastmcp.exceptions import ToolError
from opentelemetry import trace

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

T = TypeVar("T")

Reason = Literal[
    "forbidden", "sealed", "unreachable", "timeout", "not_found", "invalid", "vault_error"
]

UNAVAILABLE_TEXT: Final = "Secrets unavailable: nothing was changed; try again shortly."
FORBIDDEN_TEXT: Final = (
    "Secrets unavailable: this tool's identity may not use that secret; nothing was changed."
)


class SecretsUnavailable(ToolError):
    """A secret-needing operation failed closed. ``str()`` is safe to show to any caller.

    A ``ToolError`` so that FastMCP passes the (fixed, safe) text to the client even with
    ``mask_error_details=True``; the reason and the path are for logs and spans.
    """

    def __init__(self, reason: Reason, *, path: str = "", identity: str = "") -> None:
        self.reason: Reason = reason
        self.path = path
        self.identity = identity
        super().__init__(FORBIDDEN_TEXT if reason == "forbidden" else UNAVAILABLE_TEXT)


class VaultStartupError(RuntimeError):
    """The server cannot get its identities at startup: it must not become ready."""


# --- which client sent what ----------------------------------------------------------------------


@dataclass(frozen=True)
class ClientLabel:
    """Who a client speaks for: ``identity`` plus, for leased tokens, the lease it carries.

    ``expires_at`` is the monotonic time the token expires according to Vault's TTL (measured from
    before the request that created it, so it errs early); ``None`` for unauthenticated clients.
    """

    identity: str
    generation: int = 0
    expires_at: float | None = None


@dataclass(frozen=True)
class VaultRequest:
    label: ClientLabel
    method: str
    path: str
    status: int
    at: float


@dataclass
class VaultRequestLog:
    """Every HTTP request sent to Vault by one server instance (paths only, no bodies)."""

    requests: list[VaultRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, request: VaultRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def __len__(self) -> int:
        with self._lock:
            return len(self.requests)

    def since(self, mark: int) -> list[VaultRequest]:
        with self._lock:
            return list(self.requests[mark:])


# --- clients -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VaultEndpoint:
    address: str
    timeout_seconds: float
    verify: bool | str  # True, False, or the path of a CA bundle

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.address).scheme == "https"


def make_client(
    endpoint: VaultEndpoint, token: str | None, *, label: ClientLabel, requests_log: VaultRequestLog
) -> hvac.Client:
    """An hvac client for exactly this token (``None``: unauthenticated), counted in the log."""
    session = requests.Session()
    # Never read proxies, netrc credentials or CA bundles from the environment implicitly.
    session.trust_env = False
    # On the session itself: given a session, hvac takes its ``verify`` (True, the system CAs,
    # unless set here) over the ``verify`` argument, and MCP_VAULT_CA_FILE would be ignored.
    session.verify = endpoint.verify

    def count(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        request = response.request
        requests_log.record(
            VaultRequest(
                label=label,
                method=str(request.method),
                path=urlsplit(str(request.url)).path.removeprefix("/v1/"),
                status=response.status_code,
                at=time.monotonic(),
            )
        )

    session.hooks["response"].append(count)
    # token="" rather than None: with None, hvac falls back to VAULT_TOKEN / ~/.vault-token.
    return hvac.Client(
        url=endpoint.address,
        token=token or "",
        verify=endpoint.verify,
        timeout=endpoint.timeout_seconds,
        session=session,
    )


def close_client(client: hvac.Client) -> None:
    client.adapter.close()


# --- running operations --------------------------------------------------------------------------


def reason_of(error: BaseException) -> Reason | None:
    """The fail-closed reason for an error from hvac or requests; ``None`` if it is not one."""
    if isinstance(error, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
        return "forbidden"
    if isinstance(error, hvac.exceptions.VaultDown | hvac.exceptions.VaultNotInitialized):
        return "sealed"
    if isinstance(error, hvac.exceptions.InvalidPath):
        return "not_found"
    if isinstance(error, hvac.exceptions.InvalidRequest | hvac.exceptions.ParamValidationError):
        return "invalid"
    if isinstance(error, hvac.exceptions.VaultError):
        return "vault_error"
    if isinstance(error, requests.exceptions.Timeout):
        return "timeout"
    if isinstance(error, requests.exceptions.RequestException):
        return "unreachable"
    return None


def call(operation: str, path: str, identity: str, fn: Callable[[], T]) -> T:
    """Run one Vault operation in a span; map every Vault or transport error to SecretsUnavailable.

    The original exception is dropped (``from None``): its text is safe, but its traceback frames
    hold the client, and a logger configured to capture locals would print the token.
    """
    with tracer.start_as_current_span(
        f"vault {operation}",
        attributes={"vault.operation": operation, "vault.path": path, "vault.identity": identity},
    ) as span:
        try:
            return fn()
        except Exception as error:  # classified below; anything else is re-raised
            reason = reason_of(error)
            if reason is None:
                raise
            span.set_status(trace.StatusCode.ERROR, reason)
            span.set_attribute("vault.failure", reason)
            log.warning("vault %s on %s as %s failed: %s", operation, path, identity, reason)
        raise SecretsUnavailable(reason, path=path, identity=identity) from None


async def call_async(operation: str, path: str, identity: str, fn: Callable[[], T]) -> T:
    """``call`` in a worker thread: hvac is synchronous and must not block the event loop."""
    return await asyncio.to_thread(call, operation, path, identity, fn)
