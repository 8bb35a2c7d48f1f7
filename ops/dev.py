"""``make dev``: the Cerbos PDP, an OpenBao dev server and the dev token issuer as child
processes, the Vault bootstrap, then the MCP server in the foreground; Ctrl-C stops all four."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from ops import devstack
from ops.vault_admin import admin_client
from ops.vault_bootstrap import bootstrap
from server.__main__ import serve_forever
from server.capability import registry
from server.settings import Settings


def run_dev(settings: Settings, cerbos: Path, bao: Path, pdp_http_port: int) -> int:
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
    processes = [pdp.process]
    try:
        fresh_dev_database(settings)
        vault_port = urlsplit(settings.vault_address).port or 8200
        vault = devstack.start_openbao(bao, workdir=workdir / "vault", port=vault_port)
        processes.append(vault.process)
        # The root token stays in this process: it bootstraps Vault and delivers the server's
        # credential files (a role id and a wrapped secret id the server unwraps and deletes).
        bootstrap(
            admin_client(settings, vault.root_token),
            out_dir=settings.vault_role_id_file.parent,
            capabilities=registry.load(settings.capabilities),
        )
        issuer_env = {
            "MCP_ENVIRONMENT": "development",
            "MCP_AUTH_ISSUER": settings.auth_issuer or "",
            "MCP_AUTH_JWKS_URL": settings.auth_jwks_url,
            "MCP_DEV_ISSUER_DIR": str(settings.dev_issuer_dir),
        }
        processes.append(
            devstack.start_dev_issuer(
                workdir=workdir, env=issuer_env, jwks_url=settings.auth_jwks_url
            )
        )
        print(
            BANNER.format(
                url=settings.resource_url,
                pdp=pdp.grpc_address,
                audit=pdp.audit_log,
                vault=vault.address,
                issuer=settings.auth_issuer,
                tracing=_tracing_line(settings),
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
  Tracing                    {tracing}

  Get a token:     make token user=alice      (alice bob carol dave erin mallory)
  Connect:         Authorization: Bearer <token>   (see README, "Connect a client")
  Identities:      make identities            (what each Vault identity can reach)
  Access:          make access-report         (who may do what, asked of this PDP)
  Stop:            Ctrl-C stops the server, the PDP, OpenBao and the issuer.
"""
