"""Authentication: bearer JWTs, verified on every request.

FastMCP's ``JWTVerifier`` checks signature, algorithm, issuer and audience, but accepts a token
without ``exp`` and ignores ``nbf``. ``StrictJWTVerifier`` closes both gaps and additionally
refuses a token whose claims do not describe a principal, so everything past this point can
rely on a complete, well-typed identity.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from fastmcp.server.auth import AccessToken, JWTVerifier, RemoteAuthProvider
from pydantic import AnyHttpUrl

from server.edge.principal import InvalidClaims, principal_from_claims
from server.settings import Settings

log = logging.getLogger(__name__)

# A bearer token longer than this is not a JWT we issue; refuse it before any parsing.
MAX_TOKEN_LENGTH = 8192


class StrictJWTVerifier(JWTVerifier):
    """JWTVerifier that also requires ``exp``, honours ``nbf``/``iat`` and a usable principal.

    Every request is verified. A token verified in the last ``cache_seconds`` skips the signature
    check (the same bytes cannot change their signature), but its time claims are re-checked
    against the clock on every request.
    """

    def __init__(
        self,
        *,
        clock_skew_seconds: int,
        cache_seconds: float = 60,
        cache_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.clock_skew_seconds = clock_skew_seconds
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self._verified: OrderedDict[str, tuple[AccessToken, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._verified)}

    async def load_access_token(self, token: str) -> AccessToken | None:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None and now < cached[1]:
            self.hits += 1
            remembered = cached[0]
            return remembered if self._time_problem(remembered.claims, now) is None else None
        self.misses += 1
        access = await super().load_access_token(token)
        if access is None:
            return None
        reason = self._time_problem(access.claims, now) or self._principal_problem(access.claims)
        if reason is not None:
            # The subject is safe to log; the token itself never is.
            log.info("bearer token rejected for %r: %s", access.claims.get("sub"), reason)
            return None
        self._remember(token, access, now)
        return access

    def _remember(self, token: str, access: AccessToken, now: float) -> None:
        self._verified[token] = (access, now + self.cache_seconds)
        self._verified.move_to_end(token)
        while len(self._verified) > self.cache_size:
            self._verified.popitem(last=False)

    def _time_problem(self, claims: dict[str, Any], now: float) -> str | None:
        skew = self.clock_skew_seconds
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            return "exp missing or not a number"
        if exp <= now - skew:
            return "expired"
        if nbf is not None and (not _is_number(nbf) or nbf > now + skew):
            return "not yet valid (nbf)"
        if iat is not None and (not _is_number(iat) or iat > now + skew):
            return "issued in the future (iat)"
        return None

    @staticmethod
    def _principal_problem(claims: dict[str, Any]) -> str | None:
        try:
            principal_from_claims(claims)
        except InvalidClaims as exc:
            return str(exc)
        return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def build_auth_provider(settings: Settings) -> RemoteAuthProvider:
    """Token verification plus RFC 9728 protected-resource metadata for MCP clients."""
    if not (settings.auth_jwks_url and settings.auth_issuer):
        raise ValueError("authentication needs a JWKS URL and an issuer")
    verifier = StrictJWTVerifier(
        jwks_uri=settings.auth_jwks_url,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        algorithm=settings.auth_algorithm,
        clock_skew_seconds=settings.auth_clock_skew_seconds,
    )
    servers = settings.authorization_servers or [settings.auth_issuer]
    return RemoteAuthProvider(
        token_verifier=verifier,
        authorization_servers=[AnyHttpUrl(url) for url in servers],
        base_url=settings.base_url,
        resource_name=settings.server_name,
    )
