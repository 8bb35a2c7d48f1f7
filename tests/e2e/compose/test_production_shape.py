"""The compose stack's production shape, run with the real binaries instead of containers: each
service's own files and commands, read from ``compose/docker-compose.yaml``, with container
paths mapped to directories (one per volume, one per compose secret) and container addresses to
loopback ports.

In order, as compose runs them: the generated secrets; tls-init (a private CA and OpenBao's
certificate); OpenBao from ``compose/openbao/openbao.hcl`` (raft, static seal, TLS, audit: the
pinned bao accepts it); openbao-init (initialised once, root token and recovery keys to files,
unsealed by the static key, again after a restart, and a second run changes nothing);
PostgreSQL's init script (an owner that may create roles, no superuser); the bootstrap job over
verified TLS with that owner; and the server in production mode: refused without the CA, ready
with it, serving an authorized call.

Not covered (no engine): the images themselves, users and file modes inside containers, compose's
own ordering and networking. docs/compose.md lists them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from ops.compose_secrets import compose_secrets
from ops.dev_issuer import DevIssuer
from ops.devstack import PDP, ManagedProcess, free_port, free_port_pair, spawn, wait_until
from ops.postgres_server import PostgresServer, binaries, start_postgres
from tests.support import ROOT

COMPOSE_DIR = ROOT / "compose"
SPEC: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "docker-compose.yaml").read_text())
SERVICES: dict[str, Any] = SPEC["services"]
OWN_VARIABLES = ("MCP_", "VAULT_", "BAO_")


@dataclass
class Host:
    """Where the containers' paths and addresses are on this machine."""

    base: Path
    openbao_port: int

    def volume(self, name: str) -> Path:
        path = self.base / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def secret(self, name: str) -> Path:
        return self.base / "run-secrets" / name

    def path(self, service: str, container_path: str) -> str:
        """A container path of ``service`` -> the file or directory here."""
        if container_path.startswith("/run/secrets/"):
            return str(self.secret(container_path.removeprefix("/run/secrets/")))
        for volume in SERVICES[service].get("volumes", []):
            source, target = volume.split(":")[:2]
            if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
                rest = container_path[len(target) :].lstrip("/")
                root = (
                    (COMPOSE_DIR / source).resolve()
                    if source.startswith(".")
                    else self.volume(source)
                )
                return str(root / rest) if rest else str(root)
        raise AssertionError(f"{service}: {container_path} is not mounted")

    @property
    def openbao(self) -> str:
        return f"https://127.0.0.1:{self.openbao_port}"

    def address(self, text: str) -> str:
        return text.replace("https://openbao:8200", self.openbao)


def job_command(service: str, host: Host) -> list[str]:
    """The job's ``python -m ops ...`` command, its container paths mapped to here."""
    spec = SERVICES[service]
    command = spec["command"]
    text = command[0] if spec.get("entrypoint") == ["/bin/sh", "-c"] else shlex.join(command)
    ops_part = text.split("&&")[0]
    args = []
    for arg in shlex.split(ops_part):
        name, eq, value = arg.partition("=")
        if eq and value.startswith("/"):
            arg = f"{name}={host.path(service, value)}"
        args.append(host.address(arg))
    assert args[:3] == ["python", "-m", "ops"], args
    return [sys.executable, *args[1:]]


def run_job(service: str, host: Host, env: dict[str, str] | None = None) -> str:
    argv = job_command(service, host)
    argv = [a for a in argv if not a.startswith("--owner=")]  # container uids mean nothing here
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(OWN_VARIABLES)}
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env={**inherited, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{service}: {argv}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def render_openbao_config(host: Host) -> Path:
    text = (COMPOSE_DIR / "openbao" / "openbao.hcl").read_text()
    port = host.openbao_port
    for container, here in (
        ("0.0.0.0:8200", f"127.0.0.1:{port}"),
        ("0.0.0.0:8201", f"127.0.0.1:{port + 1}"),
        ("https://openbao:8200", f"https://127.0.0.1:{port}"),
        ("https://openbao:8201", f"https://127.0.0.1:{port + 1}"),
    ):
        assert container in text, container
        text = text.replace(container, here)
    text = re.sub(
        r'"(file://)?(/[^"]+)"',
        lambda m: f'"{m.group(1) or ""}{host.path("openbao", m.group(2))}"',
        text,
    )
    rendered = host.base / "openbao.hcl"
    rendered.write_text(text)
    return rendered


def start_openbao(bao: Path, host: Host, config: Path) -> ManagedProcess:
    command = SERVICES["openbao"]["command"]
    args = [a for a in command if not a.startswith("-config=")]
    home = host.base / "bao-home"
    home.mkdir(exist_ok=True)
    process = spawn(
        "openbao",
        [str(bao), *args, f"-config={config}"],
        log_path=host.base / "openbao.log",
        env={"HOME": str(home)},
        unset_prefixes=("VAULT_", "BAO_"),
    )
    wait_until(
        lambda: process.alive() and listening(host.openbao_port),
        timeout=60,
        what="OpenBao",
    )
    return process


def listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def health(host: Host, ca: Path | None) -> int:
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    try:
        with urllib.request.urlopen(  # noqa: S310 - loopback
            f"{host.openbao}/v1/sys/health", timeout=2, context=context
        ) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path, free_port_pair())


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    # The fixture's own owner and database; the compose script creates mcp_owner and mcp.
    server = start_postgres(owner="fixture_owner", database="fixture")
    yield server
    server.remove()


def place_secrets(host: Host) -> None:
    """`make compose-up`'s files, where compose mounts them (/run/secrets/<name>)."""
    generated = host.base / "compose-secrets"
    compose_secrets(generated)
    host.secret("x").parent.mkdir(parents=True, exist_ok=True)
    for name, spec in SPEC["secrets"].items():
        shutil.copy(generated / Path(spec["file"]).name, host.secret(name))


def run_owner_script(postgres: PostgresServer, host: Host) -> None:
    script = COMPOSE_DIR / "postgres" / "10-owner.sql"
    mounted = host.path("postgres", "/docker-entrypoint-initdb.d/10-owner.sql")
    assert Path(mounted) == script.resolve()
    done = subprocess.run(
        [
            str(binaries() / "psql"),
            "-v",
            "ON_ERROR_STOP=1",
            "--no-psqlrc",
            "-h",
            "127.0.0.1",
            "-p",
            str(postgres.port),
            "-U",
            SERVICES["postgres"]["environment"]["POSTGRES_USER"],
            "-d",
            "postgres",
            "-v",
            f"owner_password_file={host.secret('pg_owner_password')}",
            "-f",
            str(script),
        ],
        env={**os.environ, "PGPASSWORD": postgres.superuser_password},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


async def owner_attributes(postgres: PostgresServer) -> dict[str, Any]:
    """What the init script made, asked as the superuser."""
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=postgres.port,
        user="postgres",
        password=postgres.superuser_password,
        database="mcp",
    )
    try:
        role = await conn.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1",
            "mcp_owner",
        )
        return {
            "role": tuple(role),
            "database owner": await conn.fetchval(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mcp'"
            ),
            "public may connect": await conn.fetchval(
                "SELECT has_database_privilege('public', 'mcp', 'CONNECT')"
            ),
            "public may create": await conn.fetchval(
                "SELECT has_schema_privilege('public', 'public', 'CREATE')"
            ),
        }
    finally:
        await conn.close()


async def create_ticket(url: str, bearer: str) -> dict[str, Any]:
    async with Client(StreamableHttpTransport(url, auth=bearer)) as alice:
        created = await alice.call_tool("create_ticket", {"title": "Production shape"})
    assert isinstance(created.structured_content, dict)
    return created.structured_content


def server_env(host: Host, postgres: PostgresServer, pdp: PDP, issuer: DevIssuer) -> dict[str, str]:
    env = {**SPEC["x-server-env"], **SERVICES["mcp-server"]["environment"]}
    port = free_port()
    env.update(
        {
            "MCP_HOST": "127.0.0.1",
            "PORT": str(port),
            "MCP_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "MCP_AUTH_ISSUER": issuer.issuer,
            "MCP_AUTH_JWKS_URL": issuer.jwks_url,
            "MCP_PDP_ADDRESS": pdp.grpc_address,
            "MCP_DATABASE_URL": env["MCP_DATABASE_URL"].replace(
                "postgres:5432", f"127.0.0.1:{postgres.port}"
            ),
            "MCP_VAULT_ADDRESS": host.address(env["MCP_VAULT_ADDRESS"]),
            "MCP_OTEL_EXPORTER": "none",  # no collector here
        }
    )
    for key in ("MCP_VAULT_CA_FILE", "MCP_VAULT_ROLE_ID_FILE", "MCP_VAULT_WRAPPED_SECRET_ID_FILE"):
        env[key] = host.path("mcp-server", env[key])
    env.pop("MCP_OTEL_ENDPOINT", None)
    env.pop("MCP_OTEL_PROTOCOL", None)
    return {k: str(v) for k, v in env.items()}


def serve(host: Host, env: dict[str, str], name: str) -> ManagedProcess:
    return spawn(
        name,
        [sys.executable, "-m", "server", "serve"],
        log_path=host.base / f"{name}.log",
        env=env,
        unset_prefixes=OWN_VARIABLES,
    )


def readiness(port: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return int(error.code), {}


def test_the_production_shaped_stack_initialises_once_and_serves_in_production_mode(
    host: Host,
    postgres: PostgresServer,
    bao_bin: Path,
    pdp: PDP,
    issuer: DevIssuer,
    token: Callable[..., str],
) -> None:
    place_secrets(host)

    # tls-init: the CA certificate for the clients, OpenBao's certificate and key.
    assert "new CA and certificate written" in run_job("tls-init", host)
    ca = Path(host.path("mcp-server", SPEC["x-server-env"]["MCP_VAULT_CA_FILE"]))
    Path(host.path("openbao", "/openbao/data/raft")).mkdir(parents=True, exist_ok=True)
    assert "kept (current)" in run_job("tls-init", host)

    # OpenBao from the compose configuration: not initialised yet, TLS verified with the CA.
    config = render_openbao_config(host)
    openbao = start_openbao(bao_bin, host, config)
    try:
        assert health(host, ca) == 501
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            health(host, None)  # without the stack's CA nothing trusts it

        # openbao-init: once; the root token and recovery keys to files only it writes.
        assert "openbao-init: initialised" in run_job("openbao-init", host)
        init_dir = Path(host.path("openbao-init", "/openbao-init"))
        for name in ("root-token", "recovery-keys.json"):
            assert stat.S_IMODE((init_dir / name).stat().st_mode) == 0o600
        root_token = (init_dir / "root-token").read_text()
        assert (
            len(json.loads((init_dir / "recovery-keys.json").read_text())["recovery_keys_base64"])
            == 1
        )
        assert health(host, ca) == 200  # unsealed by the static key, nobody typed a key

        # A restart unseals by itself; a second init changes nothing.
        openbao.stop()
        openbao = start_openbao(bao_bin, host, config)
        wait_until(lambda: health(host, ca) == 200, timeout=60, what="OpenBao unsealed again")
        assert "already initialised" in run_job("openbao-init", host)
        assert (init_dir / "root-token").read_text() == root_token
        logged = (host.base / "openbao.log").read_text()
        assert root_token.strip() not in logged

        # PostgreSQL: the image's init script makes an owner that may create roles, no more.
        run_owner_script(postgres, host)
        assert asyncio.run(owner_attributes(postgres)) == {
            "role": (False, True, False),  # no superuser, may create roles, no databases
            "database owner": "mcp_owner",
            "public may connect": False,
            "public may create": False,
        }

        # vault-bootstrap: over verified TLS, with the owner's login for Vault's database engine.
        env = server_env(host, postgres, pdp, issuer)
        bootstrap_env = {
            **{k: v for k, v in env.items() if k.startswith("MCP_")},
            "MCP_VAULT_CA_FILE": str(ca),
        }
        boot = run_job("vault-bootstrap", host, env=bootstrap_env)
        assert "created    database role mcp-tickets" in boot and "credential" in boot

        # The server in production mode: without the CA it cannot even reach Vault.
        no_ca = serve(host, {**env, "MCP_VAULT_CA_FILE": ""}, "server-without-ca")
        no_ca.process.wait(120)
        assert no_ca.process.returncode != 0
        assert "startup refused" in no_ca.log_tail(60) or "VaultStartupError" in no_ca.log_tail(60)
        assert Path(env["MCP_VAULT_WRAPPED_SECRET_ID_FILE"]).exists()  # never unwrapped

        server = serve(host, env, "server")
        try:

            def ready() -> bool:
                if not server.alive():
                    raise AssertionError(server.log_tail(60))
                return readiness(env["PORT"])[0] == 200

            wait_until(ready, timeout=120, what="the production server", interval=0.2)
            assert readiness(env["PORT"])[1]["checks"] == {
                "pdp": "ok",
                "vault": "ok",
                "database": "ok",
            }
            url = f"http://127.0.0.1:{env['PORT']}/mcp"
            created = asyncio.run(create_ticket(url, token("alice")))
            assert created["created_by"] == "alice"
            log = (host.base / "server.log").read_text()
            assert "DEVELOPMENT MODE" not in log and "refusing to start" not in log
        finally:
            server.stop()
    finally:
        openbao.stop()
