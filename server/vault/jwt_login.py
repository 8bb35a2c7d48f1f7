"""The server's Vault login with a JWT read from a file: Kubernetes service-account tokens.

``MCP_VAULT_LOGIN=jwt`` sends ``{"role": ..., "jwt": ...}`` to ``auth/<mount>/login``. That is the
same request for Vault's (and OpenBao's) ``kubernetes`` auth method, which checks the token with
the cluster's TokenReview API, and for its ``jwt`` auth method, which checks the signature against
configured keys or the cluster's OIDC issuer. One class serves both; the mount decides.

The file is read again on every login and nothing of it is kept: the kubelet rotates a projected
service-account token long before it expires, so the token read at startup is stale by the time
the server's Vault token reaches its max TTL and the server logs in again. The JWT is a credential:
it never appears in a log line, a span, an error message or ``repr``. When Vault refuses it, the
log says why in terms that are safe to show (issuer, subject, audience, expiry), never the token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import jwt

from server.vault.client import SecretsUnavailable, VaultStartupError

log = logging.getLogger(__name__)

SERVER = "server"


class JwtFileLogin:
    """Log in at ``auth/<mount>/login`` with the JWT currently in ``jwt_file``."""

    def __init__(self, *, jwt_file: Path, mount: str, role: str) -> None:
        self.jwt_file = jwt_file
        self.mount = mount
        self.role = role
        self.path = f"auth/{mount}/login"
        self._logged_in = False

    def __repr__(self) -> str:
        return f"JwtFileLogin(role={self.role!r}, mount={self.mount!r}, file='{self.jwt_file}')"

    def login(self, unauthenticated: hvac.Client, client_for: Callable[[str], hvac.Client]) -> Any:
        token = self._read()
        try:
            response = unauthenticated.adapter.post(
                f"/v1/{self.path}", json={"role": self.role, "jwt": token}
            )
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
            log.error(
                "Vault refused the JWT from %s at %s (role %r): %s",
                self.jwt_file,
                self.path,
                self.role,
                describe(token),
            )
            raise
        self._logged_in = True
        return response["auth"]

    def _read(self) -> str:
        try:
            token = self.jwt_file.read_text().strip()
        except OSError:
            token = ""
        if token:
            return token
        problem = f"cannot read a JWT from {self.jwt_file} (MCP_VAULT_JWT_FILE)"
        if not self._logged_in:
            raise VaultStartupError(
                f"{problem}: mount a projected service-account token there; "
                "the server will not start without its secrets (no fallback)"
            )
        # Mid-run (a re-login): fail closed like any other Vault outage, and say why in the log.
        log.error("Vault re-login impossible: %s", problem)
        raise SecretsUnavailable("invalid", path=self.path, identity=SERVER)


def describe(token: str) -> str:
    """What an operator needs to know about a refused JWT, without the JWT: who it names, for
    whom it was issued, and whether it has expired. The signature is not checked here (Vault
    did that); these claims are only a diagnosis."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "the file does not hold a well-formed JWT"
    parts = [f"{name} {claims[name]!r}" for name in ("iss", "sub", "aud") if name in claims]
    expires = claims.get("exp")
    if isinstance(expires, int | float):
        left = int(expires - time.time())
        parts.append(f"expired {-left} s ago" if left <= 0 else f"expires in {left} s")
    parts.append(
        "Vault accepts a JWT that is unexpired, signed by a key it trusts, "
        "and whose claims match the role's bindings"
    )
    return "; ".join(parts)
