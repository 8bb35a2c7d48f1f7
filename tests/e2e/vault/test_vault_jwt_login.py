"""The server logs in to Vault with a Kubernetes-style service-account JWT read from a file
(``MCP_VAULT_LOGIN=jwt``): it starts and mints every identity with it, reads the file again at
every login (the kubelet rotates projected tokens), refuses to start on a JWT Vault refuses
(no fallback to any other credential), and never shows the JWT in logs, spans or errors.

Real OpenBao with its ``jwt`` auth method checking signatures against a test RSA key, as it would
check a cluster's service-account signing key. The ``kubernetes`` auth method takes the same login
request (``{"role", "jwt"}`` at ``auth/<mount>/login``) but needs a cluster's TokenReview API, which
this suite does not have.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ops.devstack import PDP, OpenBao, start_openbao
from ops.vault_bootstrap import bootstrap
from ops.vault_plan import SERVER_POLICY
from server.runtime import build_runtime
from server.settings import Settings
from server.vault.client import UNAVAILABLE_TEXT, SecretsUnavailable, VaultStartupError
from server.vault.production_guard import violations
from tests.support import CANARIES, open_identities
from tools import CAPABILITIES

MOUNT = "jwt"
ROLE = "mcp-server"
NAMESPACE = "mcp"
SERVICE_ACCOUNT = "mcp-server"
SUBJECT = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
VAULT_AUDIENCE = "vault"
SIGNING_KEY = "tools/tickets/notifications"


@dataclass
class JwtVault:
    vault: OpenBao
    admin: hvac.Client
    key: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def jwt_vault(bao_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwtVault]:
    """OpenBao bootstrapped by the project, plus a jwt auth method that trusts a test key and a
    role for the server's service account, holding only the server's policy (as the AppRole)."""
    vault = start_openbao(bao_bin, workdir=tmp_path_factory.mktemp("openbao-jwt"))
    try:
        admin = hvac.Client(url=vault.address, token=vault.root_token, timeout=5)
        bootstrap(
            admin, out_dir=tmp_path_factory.mktemp("jwt-bootstrap"), capabilities=CAPABILITIES
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        admin.sys.enable_auth_method(method_type="jwt", path=MOUNT)
        admin.write_data(
            f"auth/{MOUNT}/config", data={"jwt_validation_pubkeys": [public_pem.decode()]}
        )
        admin.write_data(
            f"auth/{MOUNT}/role/{ROLE}",
            data={
                "role_type": "jwt",
                "user_claim": "sub",
                "bound_subject": SUBJECT,
                "bound_audiences": [VAULT_AUDIENCE],
                "token_policies": [SERVER_POLICY],
                "token_no_default_policy": True,
                "token_type": "service",
                "token_ttl": 3600,
                "token_max_ttl": 4 * 3600,
                # Lets the test see which JWT a Vault token was issued for.
                "claim_mappings": {"jti": "jti"},
            },
        )
        yield JwtVault(vault, admin, key)
    finally:
        vault.process.stop()


def service_account_jwt(
    key: rsa.RSAPrivateKey,
    *,
    lifetime: int = 3600,
    issued: float | None = None,
    audience: str = VAULT_AUDIENCE,
    jti: str | None = None,
) -> str:
    """A JWT shaped like a projected service-account token (claims as the kubelet's)."""
    now = int(issued if issued is not None else time.time())
    claims: dict[str, Any] = {
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": SUBJECT,
        "aud": [audience],
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": jti or str(uuid.uuid4()),
        "kubernetes.io": {
            "namespace": NAMESPACE,
            "serviceaccount": {"name": SERVICE_ACCOUNT, "uid": str(uuid.uuid4())},
            "pod": {"name": "mcp-server-7d9f8-abcde", "uid": str(uuid.uuid4())},
        },
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "test-key"})


@pytest.fixture
def jwt_file(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """write(jwt) puts a JWT where the kubelet would, replacing the file atomically as the kubelet
    does. Every JWT written is a canary for the final scan; the file is removed after the test."""
    path = tmp_path / "serviceaccount" / "token"

    def write(token: str) -> Path:
        CANARIES.append(token)
        path.parent.mkdir(exist_ok=True)
        staged = path.with_name(".token.new")
        staged.write_text(token)
        os.replace(staged, path)
        return path

    yield write
    path.unlink(missing_ok=True)


def jwt_settings(
    make_settings: Callable[..., Settings],
    pdp: PDP,
    vault: JwtVault,
    token_file: Path,
    **overrides: Any,
) -> Settings:
    # make_settings also delivers an AppRole credential: it must stay untouched (no fallback).
    return make_settings(
        pdp,
        vault=vault.vault,
        vault_login="jwt",
        vault_jwt_file=token_file,
        vault_jwt_mount=MOUNT,
        vault_jwt_role=ROLE,
        **overrides,
    )


def jti_of_token(admin: hvac.Client, token: str) -> str:
    return str(admin.auth.token.lookup(token)["data"]["meta"]["jti"])


def leaks(secret: str, caplog: pytest.LogCaptureFixture, spans: InMemorySpanExporter) -> list[str]:
    texts = [r.getMessage() + str(r.exc_info or "") for r in caplog.records]
    for span in spans.get_finished_spans():
        texts.append(f"{span.name} {dict(span.attributes or {})} {span.status.description}")
        texts += [f"{e.name} {dict(e.attributes or {})}" for e in span.events]
    return [text[:80] for text in texts if secret in text]


async def test_a_server_with_a_service_account_jwt_starts_and_mints_every_identity(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    jwt_vault: JwtVault,
    jwt_file: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
    spans: InMemorySpanExporter,
) -> None:
    token = service_account_jwt(jwt_vault.key)
    settings = jwt_settings(make_settings, pdp, jwt_vault, jwt_file(token))
    runtime = build_runtime(settings)
    with caplog.at_level(logging.DEBUG):
        await runtime.start()
        try:
            identities = runtime.identities
            assert identities._server is not None
            assert identities._server.lease.policies == (SERVER_POLICY,)
            assert identities._server.lease.renewable
            assert set(identities._children) == {"settings", "tickets", "accounts"}
            assert (await identities.tool("tickets").read_secret(SIGNING_KEY)).data["signing_key"]
            # Settings-level secrets came through the identities minted with it.
            assert runtime.settings.database_password is not None
            paths = [(r.path, r.status) for r in identities.requests_log.requests]
        finally:
            await runtime.close()

    assert paths.count((f"auth/{MOUNT}/login", 200)) == 1
    assert not [p for p, _ in paths if p.startswith("auth/approle")]
    assert settings.vault_wrapped_secret_id_file.exists()  # the AppRole credential: unused
    assert leaks(token, caplog, spans) == []


async def test_the_production_guard_accepts_a_jwt_login(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    jwt_vault: JwtVault,
    jwt_file: Callable[[str], Path],
) -> None:
    token_file = jwt_file(service_account_jwt(jwt_vault.key))
    settings = jwt_settings(make_settings, pdp, jwt_vault, token_file)
    async with open_identities(settings) as identities:
        facts = identities.facts
    assert facts is not None and facts.server_policies == (SERVER_POLICY,)
    assert facts.server_token_expires

    production = settings.model_copy(update={"environment": "production"})
    # What this test's OpenBao is (a dev server over http) is all the guard objects to ...
    assert [v.rule for v in violations(production, facts)] == ["dev-mode Vault", "no TLS"]
    # ... and with a real Vault over https, a JWT login passes.
    real_vault = dataclasses.replace(facts, storage_type="raft")
    https = production.model_copy(update={"vault_address": "https://vault.internal:8200"})
    assert violations(https, real_vault) == []
    assert Settings(
        environment="production",
        transport="stdio",
        vault_address="https://vault.internal:8200",
        vault_login="jwt",
    ).vault_jwt_file == Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


async def test_a_rotated_jwt_file_is_read_again_at_the_next_login(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    jwt_vault: JwtVault,
    jwt_file: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
    spans: InMemorySpanExporter,
) -> None:
    first = service_account_jwt(jwt_vault.key, jti="first")
    settings = jwt_settings(
        make_settings, pdp, jwt_vault, jwt_file(first), vault_secret_cache_seconds=0
    )
    with caplog.at_level(logging.DEBUG):
        async with open_identities(settings) as identities:
            assert identities._server is not None
            before = identities._server.lease
            assert jti_of_token(jwt_vault.admin, before.token) == "first"

            # The kubelet rotates the token: nothing happens until the server logs in again.
            second = service_account_jwt(jwt_vault.key, jti="second")
            jwt_file(second)
            await identities.tool("tickets").read_secret(SIGNING_KEY)
            assert identities._server.lease is before

            # The server's token is revoked (or reaches its max TTL): a new login, with the
            # JWT the file holds now.
            jwt_vault.admin.auth.token.revoke(before.token)
            assert (await identities.tool("tickets").read_secret(SIGNING_KEY)).data
            after = identities._server.lease
            assert after.generation > before.generation
            assert jti_of_token(jwt_vault.admin, after.token) == "second"
            logins = [r for r in identities.requests_log.requests if r.path.endswith("/login")]
    assert [(r.path, r.status) for r in logins] == [(f"auth/{MOUNT}/login", 200)] * 2
    assert leaks(first, caplog, spans) == [] and leaks(second, caplog, spans) == []


async def test_an_unreadable_jwt_file_at_re_login_fails_closed(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    jwt_vault: JwtVault,
    jwt_file: Callable[[str], Path],
) -> None:
    token_file = jwt_file(service_account_jwt(jwt_vault.key))
    settings = jwt_settings(make_settings, pdp, jwt_vault, token_file, vault_secret_cache_seconds=0)
    async with open_identities(settings) as identities:
        assert identities._server is not None
        token_file.unlink()
        jwt_vault.admin.auth.token.revoke(identities._server.lease.token)
        with pytest.raises(SecretsUnavailable) as failed:
            await identities.tool("accounts").encrypt("accounts", ["anything"])
        assert str(failed.value) == UNAVAILABLE_TEXT
        assert not [r for r in identities.requests_log.requests if "approle" in r.path]


def expired(key: rsa.RSAPrivateKey) -> str:
    # Vault allows 150 s of leeway past exp by default: this one is well beyond it.
    return service_account_jwt(key, issued=time.time() - 2 * 3600, lifetime=3600)


def signed_by_another_key(_key: rsa.RSAPrivateKey) -> str:
    return service_account_jwt(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def for_another_audience(key: rsa.RSAPrivateKey) -> str:
    return service_account_jwt(key, audience="https://kubernetes.default.svc")


@pytest.mark.parametrize(
    ("make_jwt", "diagnosis"),
    [
        (expired, r"; expired 36\d\d s ago;"),
        (signed_by_another_key, rf"; sub '{SUBJECT}'; aud \['vault'\]; expires in \d+ s;"),
        (for_another_audience, r"; aud \['https://kubernetes.default.svc'\];"),
    ],
)
async def test_a_jwt_vault_refuses_stops_startup_with_a_clear_message_and_no_fallback(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    jwt_vault: JwtVault,
    jwt_file: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
    spans: InMemorySpanExporter,
    make_jwt: Callable[[rsa.RSAPrivateKey], str],
    diagnosis: str,
) -> None:
    token = make_jwt(jwt_vault.key)
    settings = jwt_settings(make_settings, pdp, jwt_vault, jwt_file(token))
    runtime = build_runtime(settings)
    with caplog.at_level(logging.DEBUG), pytest.raises(VaultStartupError) as refused:
        await runtime.start()

    assert str(refused.value) == (
        f"Vault at {jwt_vault.vault.address} rejected the server's login (expired or reused "
        "credential): the server will not start without its secrets (no fallback)"
    )
    explained = [r.getMessage() for r in caplog.records if r.name == "server.vault.jwt_login"]
    assert len(explained) == 1
    assert explained[0].startswith(
        f"Vault refused the JWT from {settings.vault_jwt_file} at auth/{MOUNT}/login "
        f"(role '{ROLE}')"
    )
    assert re.search(diagnosis, explained[0]), explained[0]
    # No fallback: the AppRole credential next to it was never touched, nothing was minted.
    paths = [r.path for r in runtime.identities.requests_log.requests]
    assert paths == ["sys/seal-status", f"auth/{MOUNT}/login"]
    assert settings.vault_wrapped_secret_id_file.exists()
    assert token not in str(refused.value)
    assert leaks(token, caplog, spans) == []


async def test_a_missing_jwt_file_stops_startup_and_says_where_it_looked(
    pdp: PDP, make_settings: Callable[..., Settings], jwt_vault: JwtVault, tmp_path: Path
) -> None:
    settings = jwt_settings(make_settings, pdp, jwt_vault, tmp_path / "no-such-token")
    runtime = build_runtime(settings)
    with pytest.raises(VaultStartupError) as refused:
        await runtime.start()
    assert str(refused.value) == (
        f"cannot read a JWT from {tmp_path / 'no-such-token'} (MCP_VAULT_JWT_FILE): mount a "
        "projected service-account token there; the server will not start without its secrets "
        "(no fallback)"
    )
    assert [r.path for r in runtime.identities.requests_log.requests] == ["sys/seal-status"]
