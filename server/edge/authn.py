"""Authentication: one bearer JWT per request, verified once, before the body is read.

``StrictJWTVerifier`` verifies signature and algorithm with FastMCP's ``JWTVerifier`` machinery
(key lookup by ``kid`` in the JWKS, pinned algorithm, critical headers) and makes every decision
about the claims itself, in one place: ``exp`` required, ``exp``, ``nbf`` and ``iat`` all with the
same leeway (``MCP_AUTH_CLOCK_SKEW_SECONDS``), issuer, audience, and a usable principal. FastMCP's
own claim checks are not used: they refuse an ``exp`` without leeway, accept a token without
``exp`` and ignore ``nbf``.

``BearerCredentials`` takes the token from the request: exactly one ``Authorization`` header, or
none. Two headers are an ambiguous request (which one would a proxy, a log or a cache have
looked at?) and get 400 ``invalid_request``, as RFC 6750 §3.1 prescribes for a request that
repeats a parameter or uses more than one way to send a token.

``authentication_middleware`` places authentication where the edge wants it (server/app.py);
FastMCP's route-level check then only reads its result, so each request is verified once and a
request without a valid token gets FastMCP's 401 with its ``WWW-Authenticate`` challenge.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, TypeGuard

from fastmcp.server.auth import AccessToken, JWTVerifier, RemoteAuthProvider
from fastmcp.server.auth.providers.jwt import (
    _has_unsupported_critical_headers,
    _import_key_for_algorithm,
)
from fastmcp.utilities.auth import decode_jwt_header
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from pydantic import AnyHttpUrl, ConfigDict, TypeAdapter
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from server.edge.principal import InvalidClaims, principal_from_claims
from server.settings import Settings

log = logging.getLogger(__name__)

# A bearer token longer than this is not a JWT we issue; refuse it before any parsing.
MAX_TOKEN_LENGTH = 8192


class StrictJWTVerifier(JWTVerifier):
    """Signature by the configured key and algorithm, then every claim decision in one place.

    A token verified in the last ``cache_seconds`` skips the signature check (the same bytes
    cannot change their signature); its time claims are re-checked against the clock on every
    request.
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
        if not self.issuer or not self.audience:
            raise ValueError("a strict verifier needs an issuer and an audience")
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
        claims = await self._signed_claims(token)
        if claims is None:
            return None
        reason = self._claims_problem(claims, now)
        if reason is not None:
            # The subject is safe to log; the token itself never is.
            log.info("bearer token rejected for %r: %s", claims.get("sub"), reason)
            return None
        access = AccessToken(
            token=token,
            client_id=str(claims.get("client_id") or claims.get("azp") or claims["sub"]),
            scopes=self._extract_scopes(claims),
            expires_at=int(claims["exp"]),
            subject=claims["sub"],
            claims=claims,
        )
        self._remember(token, access, now)
        return access

    async def _signed_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a token signed by the configured key with the configured algorithm,
        checked the way ``JWTVerifier`` checks them (it shares the key lookup); no claim is
        judged here."""
        try:
            key = _import_key_for_algorithm(await self._get_verification_key(token), self.algorithm)
            if _has_unsupported_critical_headers(decode_jwt_header(token)):
                return None
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                registry=JWSRegistry(algorithms=[self.algorithm], strict_check_header=False),
            ).claims
        except (JoseError, ValueError, TypeError, KeyError, AttributeError):
            return None
        return claims if isinstance(claims, dict) else None

    def _claims_problem(self, claims: dict[str, Any], now: float) -> str | None:
        return (
            self._time_problem(claims, now)
            or self._audience_problem(claims)
            or (None if self._validate_issuer(claims.get("iss")) else "wrong or missing iss")
            or self._scope_problem(claims)
            or self._principal_problem(claims)
        )

    def _remember(self, token: str, access: AccessToken, now: float) -> None:
        self._verified[token] = (access, now + self.cache_seconds)
        self._verified.move_to_end(token)
        while len(self._verified) > self.cache_size:
            self._verified.popitem(last=False)

    def _time_problem(self, claims: dict[str, Any], now: float) -> str | None:
        """``exp`` required; ``exp``, ``nbf`` and ``iat`` all judged with the same leeway."""
        skew = self.clock_skew_seconds
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not _is_number(exp):
            return "exp missing or not a number"
        if exp <= now - skew:
            return "expired"
        if nbf is not None and (not _is_number(nbf) or nbf > now + skew):
            return "not yet valid (nbf)"
        if iat is not None and (not _is_number(iat) or iat > now + skew):
            return "issued in the future (iat)"
        return None

    def _audience_problem(self, claims: dict[str, Any]) -> str | None:
        expected = [self.audience] if isinstance(self.audience, str) else list(self.audience or ())
        aud = claims.get("aud")
        given = aud if isinstance(aud, list) else [aud]
        if any(isinstance(a, str) and a in expected for a in given):
            return None
        return "wrong or missing aud"

    def _scope_problem(self, claims: dict[str, Any]) -> str | None:
        missing = set(self.required_scopes or ()) - set(self._extract_scopes(claims))
        return f"missing scopes {sorted(missing)}" if missing else None

    @staticmethod
    def _principal_problem(claims: dict[str, Any]) -> str | None:
        try:
            principal_from_claims(claims)
        except InvalidClaims as exc:
            return str(exc)
        return None


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class BearerCredentials(AuthenticationBackend):
    """The request's bearer token, verified by ``verifier``; more than one ``Authorization``
    header is refused outright."""

    def __init__(self, verifier: JWTVerifier) -> None:
        self.verifier = verifier

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        values = conn.headers.getlist("authorization")
        if len(values) > 1:
            raise AuthenticationError("more than one Authorization header")
        if not values or values[0][:7].lower() != "bearer ":
            return None  # no credentials: the MCP endpoint answers 401 with its challenge
        access = await self.verifier.verify_token(values[0][7:])
        if access is None:
            return None
        return AuthCredentials(access.scopes), AuthenticatedUser(access)


def _ambiguous_credentials(_conn: HTTPConnection, exc: AuthenticationError) -> Response:
    return JSONResponse(
        {"error": "invalid_request", "error_description": str(exc)},
        status_code=400,
        headers={"WWW-Authenticate": f'Bearer error="invalid_request", error_description="{exc}"'},
    )


class EdgeAuthProvider(RemoteAuthProvider):
    """RFC 9728 protected-resource metadata and FastMCP's route-level 401, with authentication
    itself placed by the edge (``authentication_middleware``) rather than by FastMCP."""

    def get_middleware(self) -> list[Any]:
        return []

    def authentication_middleware(self) -> list[Middleware]:
        """Verify the bearer token (once) and publish the result where FastMCP reads it: the
        request scope (``user``, ``auth``) and the MCP SDK's auth context."""
        verifier = self.token_verifier
        if not isinstance(verifier, JWTVerifier):
            raise TypeError("the edge authenticates with a JWTVerifier")
        return [
            Middleware(
                AuthenticationMiddleware,
                backend=BearerCredentials(verifier),
                on_error=_ambiguous_credentials,
            ),
            Middleware(AuthContextMiddleware),
        ]


# Issuer identifiers are compared as exact strings (RFC 8414 §3.3, RFC 9728 §3.3): advertise them
# as configured. A plain AnyHttpUrl turns "https://idp.example" into "https://idp.example/".
_EXACT_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(
    AnyHttpUrl, config=ConfigDict(url_preserve_empty_path=True)
)


def build_auth_provider(settings: Settings) -> EdgeAuthProvider:
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
    return EdgeAuthProvider(
        token_verifier=verifier,
        authorization_servers=[_EXACT_URL.validate_python(url) for url in servers],
        base_url=settings.base_url,
        resource_name=settings.server_name,
    )
