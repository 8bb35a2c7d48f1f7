"""A local token issuer for development and tests. Not for production.

It generates its signing key on first use (kept under ``.dev/``, never committed), publishes the
public half as JWKS with OpenID/OAuth discovery documents, and mints tokens for the demo
principals. The server verifies these tokens exactly as it would verify tokens from Keycloak,
Auth0 or Okta: through the JWKS URL, issuer and audience settings.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PRINCIPALS_FILE = Path(__file__).resolve().parent.parent / "config" / "dev" / "principals.yaml"
KEY_FILE = "signing-key.pem"
ALGORITHM = "RS256"


def demo_principals(path: Path = PRINCIPALS_FILE) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of principal name to claims")
    return data


class DevIssuer:
    def __init__(self, key_dir: Path, issuer: str) -> None:
        self.key_dir = key_dir
        self.issuer = issuer.rstrip("/")
        self._key = self._load_or_create_key()
        public_jwk = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        self.kid = str(uuid.uuid5(uuid.NAMESPACE_URL, public_jwk["n"]))
        self.public_jwk = {**public_jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    def _load_or_create_key(self) -> rsa.RSAPrivateKey:
        path = self.key_dir / KEY_FILE
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{path} is not an RSA private key")
            return key
        self.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return key

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"

    def mint(self, claims: dict[str, Any], *, audience: str, ttl_seconds: int = 3600) -> str:
        """Sign ``claims`` (must include ``sub``) with iss/aud/iat/nbf/exp/jti filled in."""
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return self.sign(payload)

    def sign(self, payload: dict[str, Any]) -> str:
        """Sign exactly ``payload``, nothing added (tests use it to build malformed tokens)."""
        return jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def token_for(self, name: str, *, audience: str, ttl_seconds: int = 3600) -> str:
        principals = demo_principals()
        if name not in principals:
            raise KeyError(f"unknown demo principal {name!r}; known: {', '.join(principals)}")
        return self.mint(
            {"sub": name, **principals[name]}, audience=audience, ttl_seconds=ttl_seconds
        )

    def asgi_app(self) -> Starlette:
        async def jwks(_: Request) -> JSONResponse:
            return JSONResponse({"keys": [self.public_jwk]})

        async def discovery(_: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "jwks_uri": self.jwks_url,
                    "id_token_signing_alg_values_supported": [ALGORITHM],
                    "response_types_supported": ["token"],
                    "subject_types_supported": ["public"],
                }
            )

        return Starlette(
            routes=[
                Route("/.well-known/jwks.json", jwks),
                Route("/.well-known/openid-configuration", discovery),
                Route("/.well-known/oauth-authorization-server", discovery),
            ]
        )
