"""Replicas of the server as their own processes (``python -m server serve``), each with its own
Vault credential, over one PostgreSQL, one PDP and one OpenBao; and a client-side router that
sends each HTTP request to the replica a test chooses, as a load balancer would."""

from __future__ import annotations

import json
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from ops.dev_issuer import DevIssuer
from ops.devstack import PDP, ManagedProcess, free_port, spawn, wait_until
from ops.vault_bootstrap import deliver_server_credential
from tests.conftest import AUDIENCE, PostgresStack, admin_client
from tests.support import ROOT, as_owner

OWN_VARIABLES = ("MCP_", "VAULT_", "BAO_")


@dataclass
class Replica:
    name: str
    port: int
    process: ManagedProcess

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def ready(self) -> bool:
        """/readyz answers 200 (PDP, Vault and every store's login checked)."""
        if not self.process.alive():
            raise RuntimeError(f"replica {self.name} exited:\n{self.process.log_tail(40)}")
        try:
            with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as answer:  # noqa: S310 - loopback
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no token revoked, connections cut mid-request."""
        self.process.process.send_signal(signal.SIGKILL)
        self.process.process.wait(10)

    def client(self, token: str, **options: Any) -> Client[Any]:
        return Client(StreamableHttpTransport(self.url, auth=token), **options)


@dataclass
class Cluster:
    stack: PostgresStack
    pdp: PDP
    issuer: DevIssuer
    workdir: Path
    replicas: dict[str, Replica] = field(default_factory=dict)

    def start(
        self, names: Sequence[str], timeout: float = 120, env: dict[str, str] | None = None
    ) -> list[Replica]:
        """Start replicas together (their startups overlap, demo seeding included), each with a
        fresh single-use credential of its own, and wait until every one is ready. ``env``:
        settings that differ from the defaults below."""
        started = [self._spawn(name, env or {}) for name in names]
        try:
            for replica in started:
                wait_until(replica.ready, timeout=timeout, what=f"replica {replica.name}")
        except BaseException:
            for replica in started:
                replica.process.stop()
            raise
        return started

    def _spawn(self, name: str, extra: dict[str, str]) -> Replica:
        credential = self.workdir / name / "credential"
        role_id, wrapped = deliver_server_credential(
            admin_client(self.stack.vault), out_dir=credential
        )
        port = free_port()
        env = {
            "PORT": str(port),
            "MCP_AUTH_ISSUER": self.issuer.issuer,
            "MCP_AUTH_JWKS_URL": self.issuer.jwks_url,
            "MCP_AUTH_AUDIENCE": AUDIENCE,
            "MCP_PDP_ADDRESS": self.pdp.grpc_address,
            # A busy test machine: a slow PDP answer must not turn a write into a denial.
            "MCP_PDP_TIMEOUT_SECONDS": "4",
            "MCP_DATABASE_URL": self.stack.url,
            "MCP_VAULT_ADDRESS": self.stack.vault.address,
            "MCP_VAULT_ROLE_ID_FILE": str(role_id),
            "MCP_VAULT_WRAPPED_SECRET_ID_FILE": str(wrapped),
            # The streams below are one client per replica: throttling has its own tests.
            "MCP_RATE_LIMIT_PER_SECOND": "10000",
            "MCP_RATE_LIMIT_BURST": "10000",
            "MCP_PREAUTH_RATE_LIMIT_PER_SECOND": "0",
            **extra,
        }
        process = spawn(
            f"replica-{name}",
            [sys.executable, "-m", "server", "serve"],
            log_path=self.workdir / name / "server.log",
            cwd=ROOT,
            env=env,
            unset_prefixes=OWN_VARIABLES,
        )
        replica = Replica(name, port, process)
        self.replicas[name] = replica
        return replica

    def stop(self) -> None:
        for replica in self.replicas.values():
            replica.process.stop()

    async def query(self, statement: str, *args: Any) -> list[dict[str, Any]]:
        """As the database's owner (not as any capability): what is really stored."""
        async with as_owner(self.stack.postgres) as conn:
            return [dict(row) for row in await conn.fetch(statement, *args)]


def rpc_method(request: httpx2.Request) -> str:
    try:
        body = json.loads(request.content or b"{}")
    except ValueError:
        return ""
    return str(body.get("method", "")) if isinstance(body, dict) else ""


class Router(httpx2.AsyncBaseTransport):
    """Sends each request to the replica ``choose(request)`` names, and records who served what
    (replica, JSON-RPC method, whether the request carried input responses)."""

    def __init__(
        self, replicas: dict[str, Replica], choose: Callable[[httpx2.Request], str]
    ) -> None:
        self.replicas = replicas
        self.choose = choose
        self.inner = httpx2.AsyncHTTPTransport()
        self.served: list[tuple[str, str, bool]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        name = self.choose(request)
        port = self.replicas[name].port
        request.url = request.url.copy_with(port=port)
        request.headers["host"] = f"127.0.0.1:{port}"
        answered = b"inputResponses" in (request.content or b"")
        self.served.append((name, rpc_method(request), answered))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def client(self, url: str, token: str, **options: Any) -> Client[Any]:
        def factory(**kwargs: Any) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(**kwargs, transport=self)

        transport = StreamableHttpTransport(url, auth=token, httpx_client_factory=factory)
        return Client(transport, **options)
