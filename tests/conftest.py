"""Fixtures: the real Cerbos PDP, a real OpenBao dev server and real HTTP servers on free
loopback ports.

Nothing here is mocked. The PDP and OpenBao are the pinned binaries (``make tools``); the token
issuer is the project's dev issuer with a key generated for this test session. OpenBao is
bootstrapped with the project's own bootstrap (config/vault/), then seeded with canary secrets
that the last test of the session looks for everywhere (tests/test_zz_canary_scan.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ops.dev_issuer import DevIssuer, demo_principals
from ops.devstack import PDP, OpenBao, free_port, start_openbao, start_pdp
from ops.postgres_server import PostgresServer, start_postgres
from ops.vault_bootstrap import (
    BootstrapConfig,
    DatabaseSetup,
    bootstrap,
    deliver_server_credential,
)
from server.settings import Settings
from server.telemetry import setup as telemetry
from tests.support import (
    CANARIES,
    ROOT,
    SPANS,
    RunningServer,
    UvicornThread,
    encrypt_fixture_contacts,
    seed_canaries,
    start_server,
)
from tools import CAPABILITIES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``last`` run after every other test (the canary scan reads what they left)."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


AUDIENCE = "mcp-server-template"


@pytest.fixture(scope="session", autouse=True)
def _hermetic_environment() -> Iterator[None]:
    """Settings read MCP_* variables, hvac reads VAULT_*: a developer's shell must not leak in."""
    prefixes = ("MCP_", "VAULT_", "BAO_")
    saved = {k: v for k, v in os.environ.items() if k.startswith(prefixes) or k == "PORT"}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session", autouse=True)
def _record_everything(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every log record (DEBUG and up, with tracebacks) to a file, every span to memory: the
    canary scan reads both after the suite."""
    handler = logging.FileHandler(tmp_path_factory.getbasetemp() / "session.log")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    telemetry.install(Settings(transport="stdio"))
    processor = SimpleSpanProcessor(SPANS)
    telemetry.attach(processor)
    yield
    telemetry.detach(processor)
    root.removeHandler(handler)
    root.setLevel(previous)
    handler.close()


@pytest.fixture(scope="session")
def cerbos_bin() -> Path:
    configured = os.environ.get("CERBOS_BIN")
    candidates = [Path(configured)] if configured else sorted(ROOT.glob(".tools/cerbos-*/cerbos"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    pytest.fail("Cerbos PDP binary not found: run `make tools` (or set CERBOS_BIN)")


@pytest.fixture(scope="session")
def bao_bin() -> Path:
    configured = os.environ.get("BAO_BIN")
    candidate = Path(configured) if configured else ROOT / ".venv" / "bin" / "bao"
    if candidate.is_file():
        return candidate
    pytest.fail("OpenBao binary not found: run `make tools` (or set BAO_BIN)")


@pytest.fixture(scope="session")
def openbao(bao_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """One OpenBao dev server for the session, bootstrapped and seeded with canaries."""
    running = start_openbao(bao_bin, workdir=tmp_path_factory.mktemp("openbao"))
    admin = admin_client(running)
    bootstrap(
        admin, out_dir=tmp_path_factory.mktemp("bootstrap-credential"), capabilities=CAPABILITIES
    )
    seed_canaries(admin)
    encrypt_fixture_contacts(admin)
    CANARIES.extend([running.root_token, running.unseal_key])
    yield running
    running.process.stop()


def admin_client(vault: OpenBao) -> hvac.Client:
    return hvac.Client(url=vault.address, token=vault.root_token, timeout=5)


@pytest.fixture(scope="session")
def vault_admin(openbao: OpenBao) -> hvac.Client:
    return admin_client(openbao)


@pytest.fixture(scope="session")
def pdp(cerbos_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PDP]:
    running = start_pdp(cerbos_bin, workdir=tmp_path_factory.mktemp("pdp"))
    yield running
    running.process.stop()


@pytest.fixture(scope="session")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevIssuer]:
    port = free_port()
    dev_issuer = DevIssuer(tmp_path_factory.mktemp("issuer"), f"http://127.0.0.1:{port}")
    http = UvicornThread(dev_issuer.asgi_app(), port=port).start()
    yield dev_issuer
    http.stop()


@pytest.fixture(scope="session")
def token(issuer: DevIssuer) -> Callable[..., str]:
    """token("alice") -> a valid bearer token; keyword arguments override claims."""

    def make(name: str, *, ttl_seconds: int = 600, **claims: Any) -> str:
        base = {"sub": name, **demo_principals().get(name, {})}
        return issuer.mint({**base, **claims}, audience=AUDIENCE, ttl_seconds=ttl_seconds)

    return make


@pytest.fixture(scope="session")
def make_settings(
    issuer: DevIssuer, openbao: OpenBao, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    """Settings for one server: its own database and a fresh, single-use Vault credential."""

    def make(pdp: PDP, *, vault: OpenBao | None = None, **overrides: Any) -> Settings:
        vault = vault or openbao
        db = tmp_path_factory.mktemp("db") / "store.db"
        role_id, wrapped = deliver_server_credential(
            admin_client(vault), out_dir=tmp_path_factory.mktemp("credential")
        )
        values: dict[str, Any] = {
            "transport": "http",
            "port": free_port(),
            "auth_issuer": issuer.issuer,
            "auth_jwks_url": issuer.jwks_url,
            "auth_audience": AUDIENCE,
            "pdp_address": pdp.grpc_address,
            "database_url": f"sqlite+aiosqlite:///{db}",
            # Tests fire calls back to back; throttling has its own test.
            "rate_limit_per_second": 10_000.0,
            "rate_limit_burst": 10_000,
            "preauth_rate_limit_per_second": 0.0,
            "vault_address": vault.address,
            "vault_role_id_file": role_id,
            "vault_wrapped_secret_id_file": wrapped,
        }
        return Settings(**{**values, **overrides})

    return make


@pytest.fixture(scope="module")
def server(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[RunningServer]:
    """One real server per test module, on the shared PDP, with a fresh seeded database."""
    running = start_server(make_settings(pdp), token)
    yield running
    running.stop()


@pytest.fixture
def fresh_openbao(bao_bin: Path, tmp_path: Path) -> Iterator[Callable[..., OpenBao]]:
    """An OpenBao of this test's own (to seal, break or configure), bootstrapped on request:
    ``fresh_openbao(config=BootstrapConfig(...))``."""
    started: list[OpenBao] = []

    def start(config: BootstrapConfig | None = None) -> OpenBao:
        running = start_openbao(bao_bin, workdir=tmp_path / f"openbao-{len(started)}")
        started.append(running)
        bootstrap(
            admin_client(running),
            out_dir=tmp_path / "bootstrap",
            capabilities=CAPABILITIES,
            config=config,
        )
        return running

    yield start
    for running in started:
        running.process.stop()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span ended in this process during the test (servers export nothing by default)."""
    telemetry.install(Settings(transport="stdio"))
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    telemetry.attach(processor)
    yield exporter
    telemetry.detach(processor)


@dataclass
class PostgresStack:
    """A throwaway PostgreSQL (from the pinned wheel) and an OpenBao of its own whose database
    engine creates each capability's users in it."""

    postgres: PostgresServer
    vault: OpenBao

    @property
    def url(self) -> str:
        return self.postgres.url()


def start_postgres_stack(bao: Path, workdir: Path) -> PostgresStack:
    postgres = start_postgres()
    try:
        vault = start_openbao(bao, workdir=workdir / "openbao")
    except BaseException:
        postgres.remove()
        raise
    try:
        bootstrap(
            admin_client(vault),
            out_dir=workdir / "bootstrap",
            capabilities=CAPABILITIES,
            database=DatabaseSetup(postgres.url(), postgres.owner, postgres.owner_password_file),
        )
    except BaseException:
        vault.process.stop()
        postgres.remove()
        raise
    CANARIES.extend(
        [vault.root_token, vault.unseal_key, postgres.owner_password, postgres.superuser_password]
    )
    return PostgresStack(postgres, vault)


@pytest.fixture(scope="module")
def postgres_stack(
    bao_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostgresStack]:
    """One per test module: PostgreSQL with the capabilities' tables, and its OpenBao."""
    stack = start_postgres_stack(bao_bin, tmp_path_factory.mktemp("postgres-stack"))
    yield stack
    stack.vault.process.stop()
    stack.postgres.remove()
