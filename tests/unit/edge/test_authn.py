"""Bearer authentication: one leeway for every time claim, one Authorization header, and the
protected-resource metadata naming the issuer exactly as configured."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastmcp.server.auth.providers.jwt import RSAKeyPair, _import_key_for_algorithm
from joserfc import jwt
from starlette.authentication import AuthenticationError
from starlette.requests import HTTPConnection
from starlette.routing import Router

from server.edge.authn import BearerCredentials, StrictJWTVerifier, build_auth_provider
from server.settings import Settings

ISSUER = "https://idp.example"
AUDIENCE = "mcp-server-template"
SKEW = 30
NOW = 2_000_000_000.0
ALICE = {"roles": ["support_agent"], "department": "support", "teams": ["tier1"]}


@pytest.fixture(scope="module")
def keys() -> RSAKeyPair:
    return RSAKeyPair.generate()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server.edge.authn.time.time", lambda: NOW)


def verifier(keys: RSAKeyPair) -> StrictJWTVerifier:
    return StrictJWTVerifier(
        public_key=keys.public_key,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithm="RS256",
        clock_skew_seconds=SKEW,
    )


def token(keys: RSAKeyPair, **claims: Any) -> str:
    """A token for alice signed by ``keys``; a claim given as None is left out."""
    payload = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 300,
        **ALICE,
        **claims,
    }
    key = _import_key_for_algorithm(keys.private_key.get_secret_value(), "RS256")
    return jwt.encode(
        {"alg": "RS256"},
        {k: v for k, v in payload.items() if v is not None},
        key,
        algorithms=["RS256"],
    )


# The last accepted and the first refused value of each time claim, with a 30 s leeway.
BOUNDARIES = {
    "exp": (int(NOW) - SKEW + 1, int(NOW) - SKEW),
    "nbf": (int(NOW) + SKEW, int(NOW) + SKEW + 1),
    "iat": (int(NOW) + SKEW, int(NOW) + SKEW + 1),
}


@pytest.mark.parametrize("claim", BOUNDARIES)
async def test_the_clock_skew_applies_to_every_time_claim_alike(
    keys: RSAKeyPair, clock: None, claim: str
) -> None:
    accepted, refused = BOUNDARIES[claim]
    assert await verifier(keys).load_access_token(token(keys, **{claim: accepted})) is not None
    assert await verifier(keys).load_access_token(token(keys, **{claim: refused})) is None


async def test_a_token_expired_within_the_leeway_is_accepted(keys: RSAKeyPair, clock: None) -> None:
    """The case that was refused: expired 10 s ago, 30 s leeway (FastMCP's own check has none)."""
    access = await verifier(keys).load_access_token(token(keys, exp=int(NOW) - 10))
    assert access is not None and access.subject == "alice"


async def test_the_remembered_token_obeys_the_same_leeway(
    keys: RSAKeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = verifier(keys)
    monkeypatch.setattr("server.edge.authn.time.time", lambda: NOW)
    fresh = token(keys, exp=int(NOW) + 5)
    assert await strict.load_access_token(fresh) is not None
    monkeypatch.setattr("server.edge.authn.time.time", lambda: NOW + 5 + SKEW - 1)
    assert await strict.load_access_token(fresh) is not None  # from the cache, within leeway
    monkeypatch.setattr("server.edge.authn.time.time", lambda: NOW + 5 + SKEW)
    assert await strict.load_access_token(fresh) is None


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": None},
        {"exp": "soon"},
        {"nbf": "now"},
        {"aud": "another-api"},
        {"aud": None},
        {"iss": "https://idp.example/"},  # issuers compare as exact strings
        {"iss": None},
        {"roles": "admin"},
    ],
    ids=str,
)
async def test_claims_that_do_not_hold_are_refused(
    keys: RSAKeyPair, clock: None, claims: dict[str, Any]
) -> None:
    assert await verifier(keys).load_access_token(token(keys, **claims)) is None


async def test_an_audience_list_containing_ours_is_accepted(keys: RSAKeyPair, clock: None) -> None:
    assert await verifier(keys).load_access_token(token(keys, aud=["other", AUDIENCE])) is not None


def connection(*authorization: bytes) -> HTTPConnection:
    headers = [(b"authorization", value) for value in authorization]
    return HTTPConnection({"type": "http", "headers": headers})


async def test_two_authorization_headers_are_refused_before_any_verification(
    keys: RSAKeyPair, clock: None
) -> None:
    strict = verifier(keys)
    calls: list[str] = []
    original = strict.load_access_token

    async def counting(value: str) -> Any:
        calls.append(value)
        return await original(value)

    strict.load_access_token = counting  # type: ignore[method-assign]
    backend = BearerCredentials(strict)
    good = b"Bearer " + token(keys).encode()
    for pair in [(good, b"Bearer garbage"), (b"Bearer garbage", good), (good, good)]:
        with pytest.raises(AuthenticationError):
            await backend.authenticate(connection(*pair))
    assert calls == []
    assert await backend.authenticate(connection(good)) is not None
    assert await backend.authenticate(connection()) is None
    assert await backend.authenticate(connection(b"Basic YWxpY2U6eA==")) is None


@pytest.mark.parametrize(
    "issuer", ["http://127.0.0.1:9000", "https://idp.example", "https://idp.example/realms/x/"]
)
async def test_protected_resource_metadata_names_the_issuer_as_configured(issuer: str) -> None:
    settings = Settings(
        transport="http", auth_issuer=issuer, auth_jwks_url="https://idp.example/jwks"
    )
    provider = build_auth_provider(settings)
    app = Router(routes=provider.get_routes(mcp_path=settings.path))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000"
    ) as client:
        metadata = (await client.get("/.well-known/oauth-protected-resource/mcp")).json()
    assert metadata["authorization_servers"] == [issuer]
    assert metadata["resource"] == settings.resource_url
