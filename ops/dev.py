"""``make dev``: the Cerbos PDP, the development OpenBao and the dev token issuer as child
processes, the Vault bootstrap, then the MCP server in the foreground; Ctrl-C stops all four.

It never destroys data, its own or a running stack's:

1. every port it will bind is checked first (``ops.ports``); a busy one is refused with one line
   naming the port and the variable that moves it, before any file is written or process started;
2. the state directory (``ops.statedir``, ``DEV_STATE_DIR``) is locked: a second stack on the same
   directory is refused even on other ports;
3. OpenBao keeps its data under the state directory and unseals itself (``ops.dev_openbao``), so
   the transit keys that encrypt the demo database survive restarts and the database is kept.

``STORE=postgres make dev`` serves from a throwaway PostgreSQL (from the pinned wheel, fresh each
run, removed on stop) instead of the SQLite file, each capability with its own short-lived
database login from Vault.

``make dev REPLICAS=N`` serves N server processes, on ``PORT`` .. ``PORT+N-1``, over the one
PostgreSQL (REPLICAS > 1 needs it: SQLite is one file with one writer), the one PDP and the one
OpenBao; each replica logs in to Vault with a credential of its own (docs/replicas.md). The
first serves in the foreground; the others are child processes (``python -m server serve``),
ready before the banner is printed, logging to ``<state>/replicas/``.
"""

from __future__ import annotations

import sys
import time
import urllib.error
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import hvac

from ops import devstack
from ops.dev_openbao import DevVault, start_dev_openbao
from ops.devstack import ManagedProcess, http_ok, spawn, wait_until
from ops.ports import dev_ports, refuse_busy_ports
from ops.postgres_server import PostgresServer, start_postgres
from ops.statedir import StateLock, state_dir
from ops.stdio import issue_launcher_token
from ops.vault_admin import admin_client
from ops.vault_bootstrap import (
    BootstrapConfig,
    DatabaseSetup,
    bootstrap,
    deliver_server_credential,
)
from server.__main__ import serve_forever
from server.capability import registry
from server.settings import Settings
from server.store.stores import is_single_identity

SQLITE: str = "sqlite+aiosqlite:///"
# Generous: on a loaded machine the first start (OpenBao init, the bootstrap's raft writes, the
# issuer's Python imports) can take a while; a real failure still ends in one message.
STARTUP_TIMEOUT: float = 90


MAX_REPLICAS: int = 8


def run_dev(
    settings: Settings,
    cerbos: Path,
    bao: Path,
    pdp_http_port: int,
    store: str = "sqlite",
    *,
    replicas: int = 1,
    env_file: Path | None = None,
) -> int:
    if settings.environment != "development" or not settings.auth_jwks_url:
        raise SystemExit(
            "`dev` runs only in development, with MCP_AUTH_ISSUER/MCP_AUTH_JWKS_URL set"
        )
    refuse_replicas_without_a_shared_store(replicas, store)
    # Before anything is written or started: every port free, or a one-line refusal.
    jwks_url = settings.auth_jwks_url
    refuse_busy_ports(dev_ports(settings, pdp_http_port, replicas))
    state = state_dir()
    lock = StateLock(state)
    lock.acquire(command="make dev")
    processes: list[_Stops] = []
    try:
        try:
            pdp = devstack.start_pdp(
                cerbos,
                workdir=state / "cerbos",
                grpc_port=int(settings.pdp_address.rsplit(":", 1)[1]),
                http_port=pdp_http_port,
                env=devstack.pdp_tracing_env(settings),
                timeout=STARTUP_TIMEOUT,
            )
            processes.append(pdp.process)
            vault = start_dev_openbao(
                bao,
                workdir=state / "vault",
                port=urlsplit(settings.vault_address).port or 8200,
                timeout=STARTUP_TIMEOUT,
            )
            processes.append(vault.process)
            set_aside = set_aside_database(settings, state) if vault.initialised_now else None
            database = None
            if store == "postgres":
                postgres = start_postgres()
                processes.append(_Stoppable(postgres))
                settings = settings.model_copy(update={"database_url": postgres.url()})
                database = DatabaseSetup(
                    postgres.url(), postgres.owner, postgres.owner_password_file
                )
            admin = admin_client(settings, vault.root_token)
            config = BootstrapConfig.from_settings(settings)
            # Idempotent: policies and roles rewritten to the same content, secrets and keys
            # created only when absent, and a fresh credential for this server.
            bootstrap(
                admin,
                out_dir=settings.vault_role_id_file.parent,
                capabilities=registry.load(settings.capabilities),
                config=config,
                database=database,
            )
            issue_launcher_token(admin, vault.workdir, config)
            others = start_replicas(
                settings, admin, config, state, replicas=replicas, env_file=env_file
            )
            processes.extend(others)
            issuer_env = {
                "MCP_ENVIRONMENT": "development",
                "MCP_AUTH_ISSUER": settings.auth_issuer or "",
                "MCP_AUTH_JWKS_URL": jwks_url,
                "MCP_DEV_ISSUER_DIR": str(settings.dev_issuer_dir.resolve()),
            }
            processes.append(
                devstack.start_dev_issuer(
                    workdir=state,
                    env=issuer_env,
                    jwks_url=jwks_url,
                    timeout=STARTUP_TIMEOUT,
                )
            )
        except TimeoutError as failure:
            raise SystemExit(f"make dev: {failure}") from None
        print(banner(settings, pdp, vault, set_aside, replicas=replicas), flush=True)
        serve_forever(settings)
        return 0
    finally:
        for process in reversed(processes):
            process.stop()
        lock.release()


def refuse_replicas_without_a_shared_store(replicas: int, store: str) -> None:
    """One line, before anything is touched, when the replicas could not share the store."""
    if not 1 <= replicas <= MAX_REPLICAS:
        raise SystemExit(f"make dev: REPLICAS={replicas}: between 1 and {MAX_REPLICAS}")
    if replicas > 1 and store != "postgres":
        raise SystemExit(
            f"make dev: REPLICAS={replicas} needs STORE=postgres: SQLite is one file with one "
            "writer, for one server process (make dev REPLICAS=2 picks PostgreSQL by itself)"
        )


def replica_credential_dir(settings: Settings, number: int) -> Path:
    """Where replica ``number`` (2, 3, ...) finds its own role id and wrapped secret id."""
    return settings.vault_role_id_file.parent.resolve() / f"replica-{number}"


def start_replicas(
    settings: Settings,
    admin: hvac.Client,
    config: BootstrapConfig,
    state: Path,
    *,
    replicas: int,
    env_file: Path | None,
) -> list[ManagedProcess]:
    """Replicas 2..N as ``python -m server serve`` on PORT+1.., each with a fresh credential of
    its own (a wrapped secret id is unwrapped once, by one process); return once each is ready
    (/readyz), or stop them all and say which one failed."""
    started: list[ManagedProcess] = []
    try:
        for number in range(2, replicas + 1):
            role_id, wrapped = deliver_server_credential(
                admin,
                out_dir=replica_credential_dir(settings, number),
                config=config,
            )
            port = settings.port + number - 1
            argv = [sys.executable, "-m", "server"]
            if env_file is not None:
                argv += ["--env-file", str(env_file)]
            argv += ["serve", "--port", str(port)]
            process = spawn(
                f"replica-{number}",
                argv,
                log_path=state / "replicas" / f"replica-{number}.log",
                env={
                    "MCP_DATABASE_URL": settings.database_url,
                    "MCP_VAULT_ROLE_ID_FILE": str(role_id),
                    "MCP_VAULT_WRAPPED_SECRET_ID_FILE": str(wrapped),
                },
                cwd=Path.cwd(),
            )
            started.append(process)
        for number, process in enumerate(started, start=2):
            readyz = f"http://127.0.0.1:{settings.port + number - 1}/readyz"

            def ready(
                process: ManagedProcess = process, readyz: str = readyz, number: int = number
            ) -> bool:
                if not process.alive():
                    raise SystemExit(
                        f"make dev: replica {number} exited at start:\n{process.log_tail()}"
                    )
                try:
                    return http_ok(readyz)
                except urllib.error.HTTPError:
                    return False

            wait_until(ready, timeout=STARTUP_TIMEOUT, what=f"replica {number}", interval=0.2)
    except BaseException:
        for process in started:
            process.stop()
        raise
    return started


class _Stops(Protocol):
    def stop(self) -> None: ...


class _Stoppable:
    """A started PostgreSQL, stopped (and its files removed) with the other processes."""

    def __init__(self, postgres: PostgresServer) -> None:
        self.postgres = postgres

    def stop(self) -> None:
        self.postgres.remove()


def database_file(settings: Settings) -> Path | None:
    if not settings.database_url.startswith(SQLITE):
        return None
    return Path(settings.database_url.removeprefix(SQLITE)).resolve()


def set_aside_database(settings: Settings, state: Path) -> Path | None:
    """Called when OpenBao was initialised just now: a database already in the state directory
    was made with another OpenBao (before persistent storage, or after its data was removed), so
    its encrypted columns cannot be read with the new keys. It is renamed, not deleted, and the
    server starts on a fresh one."""
    database = database_file(settings)
    if database is None or state not in database.parents or not database.exists():
        return None
    suffix = time.strftime(".set-aside-%Y%m%dT%H%M%S")
    for extra in ("", "-wal", "-shm", "-journal"):
        path = database.with_name(database.name + extra)
        if path.exists():
            path.rename(path.with_name(path.name + suffix))
    return database.with_name(database.name + suffix)


def banner(
    settings: Settings,
    pdp: devstack.PDP,
    vault: DevVault,
    set_aside: Path | None = None,
    *,
    replicas: int = 1,
) -> str:
    lines = BANNER.format(
        url=settings.resource_url,
        pdp=pdp.grpc_address,
        audit=pdp.audit_log,
        vault=vault.address,
        vault_dir=vault.workdir,
        issuer=settings.auth_issuer,
        tracing=_tracing_line(settings),
        store=_store_line(settings),
        replicas=_replicas_lines(settings, replicas),
    )
    if set_aside is not None:
        lines += (
            f"\n  Note: OpenBao was initialised just now; the database made with an earlier one "
            f"was kept as\n        {set_aside} (its encrypted fields need the old keys)\n"
        )
    return lines


def _replicas_lines(settings: Settings, replicas: int) -> str:
    if replicas == 1:
        return ""
    url = settings.resource_url
    others = "\n".join(
        f"  MCP server, replica {n}      "
        + url.replace(f":{settings.port}/", f":{settings.port + n - 1}/", 1)
        + f"   log: replicas/replica-{n}.log"
        for n in range(2, replicas + 1)
    )
    return f"{others}\n  (one PostgreSQL, PDP and OpenBao; each replica its own Vault login)\n"


def _store_line(settings: Settings) -> str:
    if is_single_identity(settings.database_url):
        return f"SQLite {settings.database_url} (one identity; STORE=postgres for per-capability)"
    return f"PostgreSQL {settings.database_url}, one short-lived login per capability (Vault)"


def _tracing_line(settings: Settings) -> str:
    if settings.otel_exporter == "otlp":
        return f"server and PDP spans to {settings.otel_traces_endpoint}"
    if settings.otel_exporter == "console":
        return "server spans printed to stderr (PDP spans need MCP_OTEL_EXPORTER=otlp)"
    return "off (MCP_OTEL_EXPORTER=console or otlp turns it on; see docs/tracing.md)"


BANNER = """
  MCP server (development)   {url}
{replicas}  Cerbos PDP                 {pdp}   decision log: {audit}
  OpenBao (development)      {vault}   data kept in {vault_dir}
                             (auto-unsealed; root token in its 0600 file root-token: dev only)
  Dev token issuer           {issuer}
  Store                      {store}
  Tracing                    {tracing}

  Get a token:     make token user=alice      (alice bob carol dave erin mallory)
  Connect:         Authorization: Bearer <token>   (see docs/clients.md)
  Over stdio:      make -s stdio user=erin    (for desktop and IDE clients; docs/clients.md)
  Identities:      make identities            (what each Vault identity can reach)
  Access:          make access-report         (who may do what, asked of this PDP)
  Stop:            Ctrl-C stops the servers, the PDP, OpenBao and the issuer; data is kept.
  Start over:      make clean (after stopping) deletes the development data.
"""
