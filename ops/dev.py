"""``make dev``: the Cerbos PDP, an OpenBao dev server and the dev token issuer as child
processes, the Vault bootstrap, then the MCP server in the foreground; Ctrl-C stops all.

``STORE=postgres make dev`` also starts a throwaway PostgreSQL (from the pinned wheel) and
serves from it, each capability with its own short-lived database login from Vault."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from ops import devstack
from ops.postgres_server import PostgresServer, start_postgres
from ops.vault_admin import admin_client
from ops.vault_bootstrap import DatabaseSetup, bootstrap
from server.__main__ import serve_forever
from server.capability import registry
from server.settings import Settings
from server.store.stores import is_single_identity


class _Stops(Protocol):
    def stop(self) -> None: ...


def run_dev(
    settings: Settings, cerbos: Path, bao: Path, pdp_http_port: int, store: str = "sqlite"
) -> int:
    if settings.environment != "development" or not settings.auth_jwks_url:
        raise SystemExit(
            "`dev` runs only in development, with MCP_AUTH_ISSUER/MCP_AUTH_JWKS_URL set"
        )
    workdir = devstack.ROOT / ".dev"
    grpc_port = int(settings.pdp_address.rsplit(":", 1)[1])
    pdp = devstack.start_pdp(
        cerbos,
        workdir=workdir / "cerbos",
        grpc_port=grpc_port,
        http_port=pdp_http_port,
        env=devstack.pdp_tracing_env(settings),
    )
    processes: list[_Stops] = [pdp.process]
    try:
        fresh_dev_database(settings)
        vault_port = urlsplit(settings.vault_address).port or 8200
        vault = devstack.start_openbao(bao, workdir=workdir / "vault", port=vault_port)
        processes.append(vault.process)
        jwks_url = settings.auth_jwks_url
        database = None
        if store == "postgres":
            # A throwaway PostgreSQL from the pinned wheel in a temporary directory, fresh each
            # run like the dev OpenBao, removed on stop.
            postgres = start_postgres()
            processes.append(_Stoppable(postgres))
            settings = settings.model_copy(update={"database_url": postgres.url()})
            database = DatabaseSetup(postgres.url(), postgres.owner, postgres.owner_password_file)
        # The root token stays in this process: it bootstraps Vault and delivers the server's
        # credential files (a role id and a wrapped secret id the server unwraps and deletes).
        bootstrap(
            admin_client(settings, vault.root_token),
            out_dir=settings.vault_role_id_file.parent,
            capabilities=registry.load(settings.capabilities),
            database=database,
        )
        issuer_env = {
            "MCP_ENVIRONMENT": "development",
            "MCP_AUTH_ISSUER": settings.auth_issuer or "",
            "MCP_AUTH_JWKS_URL": jwks_url,
            "MCP_DEV_ISSUER_DIR": str(settings.dev_issuer_dir),
        }
        processes.append(
            devstack.start_dev_issuer(workdir=workdir, env=issuer_env, jwks_url=jwks_url)
        )
        print(
            BANNER.format(
                url=settings.resource_url,
                pdp=pdp.grpc_address,
                audit=pdp.audit_log,
                vault=vault.address,
                issuer=settings.auth_issuer,
                tracing=_tracing_line(settings),
                store=_store_line(settings),
            ),
            flush=True,
        )
        serve_forever(settings)
        return 0
    finally:
        for process in reversed(processes):
            process.stop()


def fresh_dev_database(settings: Settings) -> None:
    """The dev OpenBao keeps no keys across restarts: a database from a previous run holds
    contact details encrypted with a key that is gone, so development starts from a fresh one."""
    prefix = "sqlite+aiosqlite:///"
    if not settings.database_url.startswith(prefix):
        return
    database = (devstack.ROOT / settings.database_url.removeprefix(prefix)).resolve()
    if (devstack.ROOT / ".dev") not in database.parents:
        return  # only ever the development state under .dev/
    for path in database.parent.glob(database.name + "*"):
        path.unlink()


class _Stoppable:
    """A started PostgreSQL, stopped (and its files removed) with the other processes."""

    def __init__(self, postgres: PostgresServer) -> None:
        self.postgres = postgres

    def stop(self) -> None:
        self.postgres.remove()


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
  OpenBao (DEV server)       {vault}   in memory, unsealed; every secret is lost on stop
  Dev token issuer           {issuer}
  Store                      {store}
  Tracing                    {tracing}

  Get a token:     make token user=alice      (alice bob carol dave erin mallory)
  Connect:         Authorization: Bearer <token>   (see README, "Connect a client")
  Identities:      make identities            (what each Vault identity can reach)
  Access:          make access-report         (who may do what, asked of this PDP)
  Stop:            Ctrl-C stops the server, the PDP, OpenBao and the issuer.
"""
