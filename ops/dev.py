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
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from ops import devstack
from ops.dev_openbao import DevVault, start_dev_openbao
from ops.ports import dev_ports, refuse_busy_ports
from ops.postgres_server import PostgresServer, start_postgres
from ops.statedir import StateLock, state_dir
from ops.stdio import issue_launcher_token
from ops.vault_admin import admin_client
from ops.vault_bootstrap import BootstrapConfig, DatabaseSetup, bootstrap
from server.__main__ import serve_forever
from server.capability import registry
from server.settings import Settings
from server.store.stores import is_single_identity

SQLITE: str = "sqlite+aiosqlite:///"
# Generous: on a loaded machine the first start (OpenBao init, the bootstrap's raft writes, the
# issuer's Python imports) can take a while; a real failure still ends in one message.
STARTUP_TIMEOUT: float = 90


def run_dev(
    settings: Settings, cerbos: Path, bao: Path, pdp_http_port: int, store: str = "sqlite"
) -> int:
    if settings.environment != "development" or not settings.auth_jwks_url:
        raise SystemExit(
            "`dev` runs only in development, with MCP_AUTH_ISSUER/MCP_AUTH_JWKS_URL set"
        )
    # Before anything is written or started: every port free, or a one-line refusal.
    jwks_url = settings.auth_jwks_url
    refuse_busy_ports(dev_ports(settings, pdp_http_port))
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
            config = BootstrapConfig(
                approle_mount=settings.vault_approle_mount,
                server_role=settings.vault_approle_role,
                role_prefix=settings.vault_role_prefix,
                kv_mount=settings.vault_kv_mount,
                transit_mount=settings.vault_transit_mount,
            )
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
        print(banner(settings, pdp, vault, set_aside), flush=True)
        serve_forever(settings)
        return 0
    finally:
        for process in reversed(processes):
            process.stop()
        lock.release()


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
    settings: Settings, pdp: devstack.PDP, vault: DevVault, set_aside: Path | None = None
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
    )
    if set_aside is not None:
        lines += (
            f"\n  Note: OpenBao was initialised just now; the database made with an earlier one "
            f"was kept as\n        {set_aside} (its encrypted fields need the old keys)\n"
        )
    return lines


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
  Cerbos PDP                 {pdp}   decision log: {audit}
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
  Stop:            Ctrl-C stops the server, the PDP, OpenBao and the issuer; data is kept.
  Start over:      make clean (after stopping) deletes the development data.
"""
