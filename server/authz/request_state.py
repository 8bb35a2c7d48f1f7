"""The key that seals ``requestState``, shared by every replica.

On 2026-07-28 connections a tool that needs more input (a human confirmation,
``server.authz.confirmation``) returns an ``InputRequiredResult`` with a ``request_state``; the
client sends it back with the answer, to whichever replica its next request reaches. The MCP
SDK seals that state at the wire (AES-256-GCM; bound to the method, the tool, its arguments, the
authenticated principal, the server's name as audience, and a ten-minute expiry) and refuses any
state it did not seal, unchanged, with ``Invalid or expired requestState``.

Left alone, the SDK seals under a key generated in each process: a question asked by one replica
cannot be answered on another (nor across a restart). Here the key is the settings-level secret
``request_state_key``, which every replica reads from Vault at startup through its own settings
identity; the audience is ``MCP_SERVER_NAME``, the same on every replica.

FastMCP builds the sealing boundary when the server object is built, before the lifespan has read
anything from Vault, so the codec is handed over empty and receives its key at startup. Until it
has one it refuses to seal or unseal anything (fail closed): no state leaves unsealed.
"""

from __future__ import annotations

from collections.abc import Sequence

from mcp.server.request_state import (
    AESGCMRequestStateCodec,
    InvalidRequestState,
    RequestStateSecurity,
)
from pydantic import SecretStr


class KeyNotLoaded(RuntimeError):
    """The request-state key has not been read from Vault (yet): nothing is sealed."""


class SharedKeyCodec:
    """A ``RequestStateCodec`` whose key ring arrives at startup (``install``)."""

    def __init__(self) -> None:
        self._codec: AESGCMRequestStateCodec | None = None

    @property
    def loaded(self) -> bool:
        return self._codec is not None

    def install(self, keys: Sequence[SecretStr]) -> None:
        """Seal with ``keys[0]``, open with any of them (at least 32 bytes each)."""
        self._codec = AESGCMRequestStateCodec([k.get_secret_value() for k in keys])

    def clear(self) -> None:
        self._codec = None

    def seal(self, payload: bytes) -> str:
        if self._codec is None:
            # The SDK answers "Internal error" and logs it: the question is not asked.
            raise KeyNotLoaded("the request-state key is not loaded")
        return self._codec.seal(payload)

    def unseal(self, token: str) -> bytes:
        if self._codec is None:
            raise InvalidRequestState("key not loaded")
        return self._codec.unseal(token)

    def __repr__(self) -> str:
        return f"SharedKeyCodec(loaded={self.loaded})"


def request_state_security(codec: SharedKeyCodec, *, audience: str) -> RequestStateSecurity:
    """The SDK's policy with the shared codec and a stable audience (the server's name)."""
    return RequestStateSecurity(codec=codec, audience=audience)
