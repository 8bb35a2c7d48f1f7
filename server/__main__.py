"""Command line: ``python -m server <command>``.

serve            run the MCP server (streamable HTTP on 127.0.0.1:$PORT/mcp, or --transport stdio)
vault-bootstrap  set up Vault (policies, token roles, AppRole, secrets, transit key) and deliver
                 the server's credential files; idempotent; admin token read from a file
identities       print each Vault identity, its policies and what it can reach, read from Vault
dev-issuer       run the local token issuer (JWKS + discovery) at MCP_AUTH_ISSUER  [development]
token NAME       print a bearer token for a demo principal                          [development]
dev              start the Cerbos PDP, OpenBao and the dev issuer, bootstrap Vault, then serve;
                 Ctrl-C stops all                                                   [development]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn

from server.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--env-file", type=Path, help="dotenv file of settings; real env vars win")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the MCP server")
    serve.add_argument("--transport", choices=["http", "stdio"])
    serve.add_argument("--port", type=int)
    commands.add_parser("dev-issuer", help="run the local development token issuer")
    token = commands.add_parser("token", help="print a bearer token for a demo principal")
    token.add_argument("name")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    dev = commands.add_parser("dev", help="run PDP + OpenBao + dev issuer + server together")
    dev.add_argument("--cerbos", type=Path, required=True, help="path of the cerbos binary")
    dev.add_argument("--bao", type=Path, required=True, help="path of the bao binary")
    dev.add_argument("--pdp-http-port", type=int, default=3592)
    boot = commands.add_parser("vault-bootstrap", help="set up Vault and deliver the credential")
    boot.add_argument("--admin-token-file", type=Path, required=True)
    boot.add_argument(
        "--out-dir", type=Path, help="default: the directory of MCP_VAULT_ROLE_ID_FILE"
    )
    boot.add_argument(
        "--database-password-file",
        type=Path,
        help="also write the database password (generated in Vault) to this file, mode 0600, "
        "for a database server that is being created alongside (compose)",
    )
    ident = commands.add_parser("identities", help="print the identity table read from Vault")
    source = ident.add_mutually_exclusive_group(required=True)
    source.add_argument("--admin-token-file", type=Path, help="review the Vault at the address")
    source.add_argument(
        "--bao", type=Path, help="review a throw-away OpenBao dev server bootstrapped from config/"
    )
    args = parser.parse_args(argv)

    # Logs go to stderr: on stdio, stdout is the MCP channel.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides: dict[str, object] = {}
    if getattr(args, "transport", None):
        overrides["transport"] = args.transport
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if args.env_file is not None:
        overrides["_env_file"] = args.env_file
    settings = Settings(**overrides)  # type: ignore[arg-type]

    if args.command == "token":
        return _print_token(settings, args.name, args.ttl)
    if args.command == "dev-issuer":
        return _run_dev_issuer(settings)
    if args.command == "dev":
        return _run_dev(settings, args.cerbos, args.bao, args.pdp_http_port)
    if args.command == "vault-bootstrap":
        return _vault_bootstrap(
            settings, args.admin_token_file, args.out_dir, args.database_password_file
        )
    if args.command == "identities":
        return _identities(settings, args.admin_token_file, args.bao)
    return _serve(settings)


def _admin_client(settings: Settings, token: str) -> object:
    from server.identities import endpoint_from
    from server.vault import ClientLabel, VaultRequestLog, make_client

    return make_client(
        endpoint_from(settings), token, label=ClientLabel("admin"), requests_log=VaultRequestLog()
    )


def _read_token_file(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise SystemExit(f"{path} is empty")
    return token


def _vault_bootstrap(
    settings: Settings,
    admin_token_file: Path,
    out_dir: Path | None,
    database_password_file: Path | None = None,
) -> int:
    from server.vault_bootstrap import BootstrapConfig, bootstrap, export_database_password

    admin = _admin_client(settings, _read_token_file(admin_token_file))
    result = bootstrap(
        admin,
        out_dir=out_dir or settings.vault_role_id_file.parent,
        config=BootstrapConfig(
            approle_mount=settings.vault_approle_mount,
            server_role=settings.vault_approle_role,
            role_prefix=settings.vault_role_prefix,
            kv_mount=settings.vault_kv_mount,
            transit_mount=settings.vault_transit_mount,
        ),
    )
    for item in result.created:
        print(f"created    {item}")
    for item in result.unchanged:
        print(f"unchanged  {item}")
    print(f"credential {result.role_id_file} + {result.wrapped_secret_id_file}")
    if database_password_file is not None:
        export_database_password(admin, database_password_file, kv_mount=settings.vault_kv_mount)
        print(f"database password written to {database_password_file}")
    return 0


def _identities(settings: Settings, admin_token_file: Path | None, bao: Path | None) -> int:
    from server.identity_report import read_identities, render

    def report(admin: object) -> None:
        print(
            render(
                read_identities(
                    admin,
                    approle_mount=settings.vault_approle_mount,
                    server_role=settings.vault_approle_role,
                    role_prefix=settings.vault_role_prefix,
                )
            )
        )

    if admin_token_file is not None:
        report(_admin_client(settings, _read_token_file(admin_token_file)))
        return 0
    from server import devstack
    from server.vault_bootstrap import bootstrap

    assert bao is not None
    with tempfile.TemporaryDirectory(prefix="identities-") as workdir:
        vault = devstack.start_openbao(bao, workdir=Path(workdir) / "bao")
        try:
            local = settings.model_copy(update={"vault_address": vault.address})
            admin = _admin_client(local, vault.root_token)
            bootstrap(admin, out_dir=Path(workdir) / "credential")
            print(
                f"# Identities as config/vault/ sets them up (throw-away OpenBao {vault.address})"
            )
            report(admin)
        finally:
            vault.process.stop()
    return 0


def _serve(settings: Settings) -> int:
    from server.app import create_http_app, create_server

    mcp = create_server(settings)
    if settings.transport == "stdio":
        mcp.run(transport="stdio", show_banner=False)
        return 0
    if settings.environment == "development":
        logging.getLogger(__name__).warning(
            "DEVELOPMENT MODE: serving MCP on http://%s:%s%s",
            settings.host,
            settings.port,
            settings.path,
        )
    uvicorn.run(
        create_http_app(mcp, settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        server_header=False,
    )
    return 0


def _dev_issuer(settings: Settings):  # type: ignore[no-untyped-def]
    from server.dev_issuer import DevIssuer

    if settings.environment != "development" or not settings.auth_issuer:
        raise SystemExit("the dev issuer runs only in development, with MCP_AUTH_ISSUER set")
    return DevIssuer(settings.dev_issuer_dir, settings.auth_issuer)


def _print_token(settings: Settings, name: str, ttl: int) -> int:
    try:
        token = _dev_issuer(settings).token_for(
            name, audience=settings.auth_audience, ttl_seconds=ttl
        )
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    print(token)
    return 0


def _run_dev_issuer(settings: Settings) -> int:
    issuer = _dev_issuer(settings)
    url = urlsplit(issuer.issuer)
    logging.getLogger(__name__).warning(
        "DEVELOPMENT token issuer at %s (JWKS %s)", issuer.issuer, issuer.jwks_url
    )
    uvicorn.run(
        issuer.asgi_app(),
        host=url.hostname or "127.0.0.1",
        port=url.port or 80,
        log_level="warning",
    )
    return 0


def _run_dev(settings: Settings, cerbos: Path, bao: Path, pdp_http_port: int) -> int:
    from server import devstack
    from server.vault_bootstrap import bootstrap

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
        _fresh_dev_database(settings)
        vault_port = urlsplit(settings.vault_address).port or 8200
        vault = devstack.start_openbao(bao, workdir=workdir / "vault", port=vault_port)
        processes.append(vault.process)
        # The root token stays in this process: it bootstraps Vault and delivers the server's
        # credential files (a role id and a wrapped secret id the server unwraps and deletes).
        bootstrap(
            _admin_client(settings, vault.root_token),
            out_dir=settings.vault_role_id_file.parent,
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
            DEV_BANNER.format(
                url=settings.resource_url,
                pdp=pdp.grpc_address,
                audit=pdp.audit_log,
                vault=vault.address,
                issuer=settings.auth_issuer,
                tracing=_tracing_line(settings),
            ),
            flush=True,
        )
        return _serve(settings)
    finally:
        for process in reversed(processes):
            process.stop()


def _fresh_dev_database(settings: Settings) -> None:
    """The dev OpenBao keeps no keys across restarts: a database from a previous run holds
    contact details encrypted with a key that is gone, so development starts from a fresh one."""
    from server import devstack

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
    return "off (MCP_OTEL_EXPORTER=console or otlp turns it on; see README, Tracing)"


DEV_BANNER = """
  MCP server (development)   {url}
  Cerbos PDP                 {pdp}   decision log: {audit}
  OpenBao (DEV server)       {vault}   in memory, unsealed; every secret is lost on stop
  Dev token issuer           {issuer}
  Tracing                    {tracing}

  Get a token:     make token user=alice      (alice bob carol dave erin mallory)
  Connect:         Authorization: Bearer <token>   (see README, "Connect a client")
  Identities:      make identities            (what each tool's Vault identity can reach)
  Stop:            Ctrl-C stops the server, the PDP, OpenBao and the issuer.
"""


if __name__ == "__main__":
    raise SystemExit(main())
