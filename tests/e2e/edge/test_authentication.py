"""Authentication at the HTTP edge: every request carries a valid bearer token or gets a 401.

Raw HTTP requests, so status codes and headers are visible. Rejected requests must never reach
the PDP: the PDP's decision log stays unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ops.dev_issuer import DevIssuer, demo_principals
from ops.devstack import PDP
from server.edge.authn import StrictJWTVerifier
from tests.conftest import AUDIENCE
from tests.support import LEGACY_INITIALIZE, RunningServer, audit_entries, decisions_since

INITIALIZE = LEGACY_INITIALIZE
LIST_TOOLS = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def post(
    server: RunningServer,
    authorization: str | None,
    body: dict[str, Any] = INITIALIZE,
    **headers: str,
) -> httpx.Response:
    all_headers = {**HEADERS, **headers}
    if authorization is not None:
        all_headers["Authorization"] = authorization
    return httpx.post(server.url, json=body, headers=all_headers, timeout=10)


def claims(issuer: DevIssuer, name: str = "alice", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": issuer.issuer,
        "aud": AUDIENCE,
        "sub": name,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        **demo_principals()[name],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> str:
    header = {"alg": "none", "typ": "JWT"}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}."


def hs256_with_public_key(issuer: DevIssuer, payload: dict[str, Any]) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the issuer's public key."""
    public_pem = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(issuer.public_jwk)).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@pytest.fixture
def no_pdp_calls(pdp: PDP, server: RunningServer) -> Iterator[None]:
    """The test's requests must not cause a single PDP decision."""
    since = len(audit_entries(pdp.audit_log))
    yield
    assert asyncio.run(decisions_since(server, pdp.audit_log, since)) == [], (
        "a rejected request reached the PDP"
    )


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer")
    assert 'resource_metadata="' in challenge


def test_valid_token_is_accepted(server: RunningServer) -> None:
    response = post(server, f"Bearer {server.token('alice')}")
    assert response.status_code == 200


def test_missing_authorization_header_gets_401_with_resource_metadata(
    server: RunningServer, no_pdp_calls: None
) -> None:
    assert_unauthorized(post(server, None, LIST_TOOLS))


BAD_TOKENS: dict[str, Callable[[DevIssuer], str]] = {
    "expired": lambda i: i.sign(claims(i, exp=int(time.time()) - 120)),
    "without exp": lambda i: i.sign(claims(i, exp=None)),
    "exp not a number": lambda i: i.sign(claims(i, exp="tomorrow")),
    "nbf in the future": lambda i: i.sign(claims(i, nbf=int(time.time()) + 3600)),
    "iat in the future": lambda i: i.sign(claims(i, iat=int(time.time()) + 3600)),
    "wrong aud": lambda i: i.sign(claims(i, aud="another-api")),
    "missing aud": lambda i: i.sign(claims(i, aud=None)),
    "wrong iss": lambda i: i.sign(claims(i, iss="https://evil.example")),
    "missing iss": lambda i: i.sign(claims(i, iss=None)),
    "unsigned (alg none)": lambda i: unsigned(claims(i)),
    "signed by another key": lambda i: jwt.encode(
        claims(i),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
        headers={"kid": i.kid},
    ),
    "HS256 with the public key as secret": lambda i: hs256_with_public_key(i, claims(i)),
    "no roles": lambda i: i.sign(claims(i, roles=[])),
    "roles not a list": lambda i: i.sign(claims(i, roles="admin")),
    "mfa as a string": lambda i: i.sign(claims(i, name="dave", mfa="true")),
    "no subject": lambda i: i.sign(claims(i, sub=None)),
}


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_invalid_tokens_get_401(
    server: RunningServer, issuer: DevIssuer, case: str, no_pdp_calls: None
) -> None:
    assert_unauthorized(post(server, f"Bearer {BAD_TOKENS[case](issuer)}", LIST_TOOLS))


def test_audience_list_containing_ours_is_accepted(
    server: RunningServer, issuer: DevIssuer
) -> None:
    token = issuer.sign(claims(issuer, aud=["another-api", AUDIENCE]))
    assert post(server, f"Bearer {token}").status_code == 200


GARBAGE = [
    b"",
    b"Bearer",
    b"Bearer ",
    b"Basic YWxpY2U6c2VjcmV0",
    b"Bearer not-a-jwt",
    b"Bearer a.b.c",
    b"Bearer " + b"A" * 20_000,
    b"Bearer eyJhbGciOiJSUzI1NiJ9." + b"%" * 50 + b".x",
    "Bearer \u00e9\u00e9".encode(),
    b"Bearer \xff\xfe\x00garbage",
    b"bearer  " + b"x" * 10,
    b"Token abc",
]


def raw_post(server: RunningServer, authorization: bytes, body: bytes) -> int:
    """Send bytes no well-behaved client library would send; return the HTTP status."""
    request = (
        b"POST " + server.settings.path.encode() + b" HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\n"
        b"Authorization: " + authorization + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", server.http.port), timeout=10) as sock:
        sock.sendall(request)
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


def raw_exchange(server: RunningServer, head: bytes, body: bytes) -> bytes:
    """Send a request's head and (part of) its body; return the response head."""
    request = (
        b"POST " + server.settings.path.encode() + b" HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\n" + head + b"\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", server.http.port), timeout=5) as sock:
        sock.sendall(request)
        reply = sock.makefile("rb")
        lines = []
        while (line := reply.readline()) not in (b"\r\n", b""):
            lines.append(line)
    return b"".join(lines)


def test_two_authorization_headers_are_a_bad_request_whichever_comes_first(
    server: RunningServer, no_pdp_calls: None
) -> None:
    """A proxy, a log and the server could each look at another one: refuse, don't pick."""
    good = f"Bearer {server.token('alice')}".encode()
    body = json.dumps(LIST_TOOLS).encode()
    for first, second in [(good, b"Bearer forged"), (b"Bearer forged", good), (good, good)]:
        head = raw_exchange(
            server,
            b"Authorization: " + first + b"\r\nAuthorization: " + second + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n",
            body,
        )
        assert head.split()[1] == b"400", head
        assert b'Bearer error="invalid_request"' in head


def test_an_unauthenticated_request_is_answered_without_reading_its_body(
    server: RunningServer,
) -> None:
    """The head promises 100 kB and only 10 bytes follow: an app that read the body would wait
    for the rest (until the socket times out); the 401 comes at once."""
    head = raw_exchange(server, b"Content-Length: 100000\r\nConnection: close\r\n", b'{"jsonrpc"')
    assert head.split()[1] == b"401"
    assert b'resource_metadata="' in head


def test_the_clock_skew_leeway_applies_to_exp_too(server: RunningServer, issuer: DevIssuer) -> None:
    """MCP_AUTH_CLOCK_SKEW_SECONDS (30 s by default) covers exp as it covers nbf and iat."""
    skew = server.settings.auth_clock_skew_seconds
    now = int(time.time())
    within = issuer.sign(claims(issuer, exp=now - skew // 3, iat=now - 300, nbf=now - 300))
    beyond = issuer.sign(claims(issuer, exp=now - 2 * skew, iat=now - 300, nbf=now - 300))
    early = issuer.sign(claims(issuer, nbf=now + skew // 3, iat=now + skew // 3))
    assert post(server, f"Bearer {within}").status_code == 200
    assert post(server, f"Bearer {early}").status_code == 200
    assert_unauthorized(post(server, f"Bearer {beyond}"))


@pytest.mark.parametrize("header", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_authorization_headers_get_4xx_and_the_server_keeps_working(
    server: RunningServer, header: bytes
) -> None:
    status = raw_post(server, header, json.dumps(LIST_TOOLS).encode())
    assert 400 <= status < 500
    assert post(server, f"Bearer {server.token('alice')}").status_code == 200


def test_protected_resource_metadata_is_public(server: RunningServer, issuer: DevIssuer) -> None:
    response = httpx.get(f"{server.base_url}/.well-known/oauth-protected-resource/mcp", timeout=10)
    assert response.status_code == 200
    metadata = response.json()
    assert metadata["resource"] == server.settings.resource_url
    # Exactly as configured: issuer identifiers compare as strings, a trailing slash included.
    assert metadata["authorization_servers"] == [issuer.issuer]


def test_foreign_origin_is_refused(server: RunningServer) -> None:
    response = post(server, f"Bearer {server.token('alice')}", Origin="https://evil.example")
    assert response.status_code == 403


@pytest.mark.parametrize("origin", ["http://localhost:{other}", "http://127.0.0.1:{other}"])
def test_a_loopback_origin_on_another_port_is_foreign(server: RunningServer, origin: str) -> None:
    """A page served by another local program is not this server (DNS rebinding's cousin)."""
    other = server.http.port + 1
    response = post(server, f"Bearer {server.token('alice')}", Origin=origin.format(other=other))
    assert response.status_code == 403


def test_the_servers_own_origin_is_accepted(server: RunningServer) -> None:
    response = post(server, f"Bearer {server.token('alice')}", Origin=server.base_url)
    assert response.status_code == 200


def test_foreign_host_header_is_refused(server: RunningServer) -> None:
    response = post(server, f"Bearer {server.token('alice')}", Host="evil.example")
    assert response.status_code in (403, 421)


def test_every_request_is_reverified(server: RunningServer, issuer: DevIssuer) -> None:
    """A session opened with a valid token is no credential: the next request needs one too."""
    opened = post(server, f"Bearer {server.token('alice')}")
    assert opened.status_code == 200
    session = opened.headers.get("mcp-session-id")
    extra = {"Mcp-Session-Id": session} if session else {}
    assert_unauthorized(post(server, None, LIST_TOOLS, **extra))
    expired = issuer.sign(claims(issuer, exp=int(time.time()) - 60))
    assert_unauthorized(post(server, f"Bearer {expired}", LIST_TOOLS, **extra))


def strict_verifier(issuer: DevIssuer, **options: Any) -> StrictJWTVerifier:
    return StrictJWTVerifier(
        jwks_uri=issuer.jwks_url,
        issuer=issuer.issuer,
        audience=AUDIENCE,
        algorithm="RS256",
        clock_skew_seconds=0,
        **options,
    )


async def test_a_remembered_token_is_still_refused_once_it_expires(
    issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verification cache skips only the signature check: time claims are checked each time."""
    verifier = strict_verifier(issuer)
    now = time.time()
    token = issuer.sign(claims(issuer, exp=int(now) + 30))
    assert await verifier.load_access_token(token) is not None
    assert await verifier.load_access_token(token) is not None  # from the cache
    monkeypatch.setattr("server.edge.authn.time.time", lambda: now + 31)
    assert await verifier.load_access_token(token) is None


async def test_the_verification_cache_is_bounded(issuer: DevIssuer) -> None:
    verifier = strict_verifier(issuer, cache_size=3)
    for i in range(5):
        assert (
            await verifier.load_access_token(issuer.sign(claims(issuer, jti=f"t{i}"))) is not None
        )
    assert len(verifier._verified) == 3
