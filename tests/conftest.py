"""Fixtures: the real Cerbos PDP and a real HTTP server on free loopback ports.

Nothing here is mocked. The PDP is the pinned binary (``make tools``); the token issuer is the
project's dev issuer with a key generated for this test session.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server import telemetry
from server.dev_issuer import DevIssuer, demo_principals
from server.devstack import PDP, free_port, start_pdp
from server.settings import Settings
from tests.support import ROOT, RunningServer, UvicornThread, start_server

AUDIENCE = "mcp-server-template"


@pytest.fixture(scope="session", autouse=True)
def _hermetic_environment() -> Iterator[None]:
    """Settings read MCP_* variables: a developer's shell must not leak into the tests."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("MCP_") or k == "PORT"}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def cerbos_bin() -> Path:
    configured = os.environ.get("CERBOS_BIN")
    candidates = [Path(configured)] if configured else sorted(ROOT.glob(".tools/cerbos-*/cerbos"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    pytest.fail("Cerbos PDP binary not found: run `make tools` (or set CERBOS_BIN)")


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
    issuer: DevIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    def make(pdp: PDP, **overrides: Any) -> Settings:
        db = tmp_path_factory.mktemp("db") / "store.db"
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
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span ended in this process during the test (servers export nothing by default)."""
    telemetry.install(Settings(transport="stdio"))
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    telemetry.attach(processor)
    yield exporter
    telemetry.detach(processor)
