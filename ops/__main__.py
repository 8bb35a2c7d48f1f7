"""Development and operator commands: ``python -m ops <command>`` (the Makefile wraps them).

dev              start the Cerbos PDP, OpenBao and the dev issuer, bootstrap Vault, then serve
                 (--replicas N: N server processes over one PostgreSQL); Ctrl-C stops all;
                 busy ports are refused before anything starts                    [development]
stdio NAME       serve MCP on stdio as a demo principal, next to a running `dev`   [development]
clean            delete the development state (refused while `dev` runs)           [development]
dev-issuer       run the local token issuer (JWKS + discovery) at MCP_AUTH_ISSUER  [development]
token NAME       print a bearer token for a demo principal                          [development]
vault-bootstrap  set up Vault (policies, token roles, AppRole, secrets, transit keys; with a
                 PostgreSQL store also the tables and one database role per capability) and
                 deliver the server's credential files; idempotent; admin token read from a file
identities       print each Vault identity, its policies and what it can reach, read from Vault
compose-secrets  the compose stack's local secrets in compose/.secrets/, made once
tls-init         a private CA and OpenBao's TLS certificate (compose); idempotent
openbao-init     initialise a fresh, auto-unsealed OpenBao once over TLS; root token and recovery
                 keys to files (compose); idempotent
accept-tools     record the server's tools as reviewed (tests/snapshots/tools.json)
audit            pip-audit of the installed, pinned dependencies; fails when it cannot check
generate         write every generated file (policy fixtures, Vault policies, README access
                 table, configuration reference); --check only reports what is stale
new-tool         write a tool into a capability (created if new), admins only until released
new-capability   write a capability package, optionally with its own Vault identity
access-report    ask the running PDP who may do what (principals x components x actions, and
                 record examples); writes .dev/access/report.md and report.json
access-diff REF  what the working tree's policies grant and revoke compared with REF's, asked
                 of two throw-away PDPs
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import uvicorn

from server.capability import registry
from server.settings import Settings

if TYPE_CHECKING:
    from ops.vault_bootstrap import DatabaseSetup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--env-file", type=Path, help="dotenv file of settings; real env vars win")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dev-issuer", help="run the local development token issuer")
    token = commands.add_parser("token", help="print a bearer token for a demo principal")
    token.add_argument("name")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    dev = commands.add_parser("dev", help="run PDP + OpenBao + dev issuer + server together")
    dev.add_argument("--cerbos", type=Path, required=True, help="path of the cerbos binary")
    dev.add_argument("--bao", type=Path, required=True, help="path of the bao binary")
    dev.add_argument(
        "--pdp-http-port", type=int, help="default: PDP_HTTP_PORT, else 3592 (see ops/ports.py)"
    )
    dev.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="sqlite (one file, one identity) or postgres (a throwaway server from the pinned "
        "wheel, one database login per capability)",
    )
    dev.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="server processes on PORT, PORT+1, ... sharing one PostgreSQL (needs --store "
        "postgres), one PDP and one OpenBao; each logs in to Vault with its own credential",
    )
    stdio = commands.add_parser("stdio", help="serve MCP on stdio as a demo principal")
    stdio.add_argument("name")
    commands.add_parser("clean", help="delete the development state (DEV_STATE_DIR, .dev)")
    accept = commands.add_parser("accept-tools", help="record the server's tools as reviewed")
    accept_mode = accept.add_mutually_exclusive_group()
    accept_mode.add_argument("--check", action="store_true", help="only report differences")
    accept_mode.add_argument("--new", nargs="+", metavar="TOOL", help="record only these new tools")
    audit = commands.add_parser("audit", help="pip-audit the installed dependencies")
    audit.add_argument(
        "--service", choices=["pypi", "osv"], help="vulnerability database; default AUDIT_SERVICE"
    )
    boot = commands.add_parser("vault-bootstrap", help="set up Vault and deliver the credential")
    boot.add_argument("--admin-token-file", type=Path, required=True)
    boot.add_argument(
        "--out-dir", type=Path, help="default: the directory of MCP_VAULT_ROLE_ID_FILE"
    )
    boot.add_argument(
        "--database-admin-file",
        type=Path,
        help="PostgreSQL store (MCP_DATABASE_URL): a file holding the password of the database "
        "owner's login; the bootstrap creates the tables with it and gives it to Vault's "
        "database engine, which creates each capability's short-lived users",
    )
    boot.add_argument(
        "--database-admin-user",
        default="mcp_owner",
        help="the database owner's login name (default: mcp_owner)",
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
        "--bao", type=Path, help="review a throw-away OpenBao dev server bootstrapped from tools/"
    )
    commands.add_parser("compose-secrets", help="the compose stack's local secrets, made once")
    tls = commands.add_parser("tls-init", help="a private CA and OpenBao's TLS certificate")
    tls.add_argument("--out-dir", type=Path, required=True, help="OpenBao's certificate and key")
    tls.add_argument("--ca-dir", type=Path, required=True, help="the CA certificate (ca.crt)")
    tls.add_argument(
        "--host", action="append", required=True, help="a name OpenBao is reached by (repeat)"
    )
    tls.add_argument("--owner", help="UID[:GID] that owns the key (the user OpenBao runs as)")
    init = commands.add_parser("openbao-init", help="initialise a fresh OpenBao once, over TLS")
    init.add_argument("--address", required=True, help="e.g. https://openbao:8200")
    init.add_argument("--ca-file", type=Path, help="CA certificate that signed OpenBao's")
    init.add_argument("--out-dir", type=Path, required=True, help="for root-token, recovery keys")
    init.add_argument("--recovery-shares", type=int, default=1)
    init.add_argument("--recovery-threshold", type=int, default=1)
    init.add_argument("--timeout", type=float, default=120, help="seconds to wait for OpenBao")
    generate = commands.add_parser("generate", help="write every generated file")
    generate.add_argument("--check", action="store_true", help="only report stale files")
    new_tool = commands.add_parser("new-tool", help="scaffold a tool (admins only until released)")
    new_tool.add_argument("name")
    new_tool.add_argument("--capability", required=True)
    new_tool.add_argument("--kind", choices=["read", "write", "destructive"], default="read")
    new_cap = commands.add_parser("new-capability", help="scaffold a capability package")
    new_cap.add_argument("name")
    new_cap.add_argument("--identity", action="store_true", help="with its own Vault identity")
    new_cap.add_argument("--department", help="the department that owns it (default: its name)")
    report = commands.add_parser("access-report", help="ask the running PDP who may do what")
    report.add_argument("--out-dir", type=Path, help="default: .dev/access")
    diff = commands.add_parser(
        "access-diff", help="what a policy change grants and revokes, compared with a git ref"
    )
    diff.add_argument("ref", help="git revision to compare with, e.g. main or HEAD~1")
    diff.add_argument("--cerbos", type=Path, required=True, help="path of the cerbos binary")
    diff.add_argument(
        "--repo", type=Path, help="git work tree whose policies/ is compared (default: this one)"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides: dict[str, object] = {}
    if args.env_file is not None:
        overrides["_env_file"] = args.env_file
    if args.command == "generate":
        # Generated files describe the template's defaults, not this shell's settings.
        from ops.generate import main as generate_main

        return generate_main(check=args.check)
    if args.command in ("new-tool", "new-capability"):
        return _scaffold(args)
    if args.command == "clean":
        return _clean()
    if args.command == "compose-secrets":
        from ops.compose_secrets import DIRECTORY, compose_secrets

        made = compose_secrets()
        print(f"compose-secrets: {', '.join(made) or 'all present'} in {DIRECTORY}")
        return 0
    if args.command == "tls-init":
        from ops.tls_init import Owner, tls_init

        owner = Owner.parse(args.owner) if args.owner else None
        wrote = tls_init(args.out_dir, args.ca_dir, args.host, owner)
        print("tls-init: " + ("new CA and certificate written" if wrote else "kept (current)"))
        return 0
    if args.command == "openbao-init":
        from ops.openbao_init import openbao_init

        now = openbao_init(
            args.address,
            args.out_dir,
            ca_file=args.ca_file,
            recovery_shares=args.recovery_shares,
            recovery_threshold=args.recovery_threshold,
            timeout=args.timeout,
        )
        print("openbao-init: " + ("initialised" if now else "already initialised"))
        return 0
    if args.command == "audit":
        from ops.audit import main as audit_main

        return audit_main(args.service)
    if args.command == "accept-tools":
        from ops import tool_snapshot

        if args.check:
            return tool_snapshot.check()
        if args.new:
            return tool_snapshot.accept_new(args.new)
        return tool_snapshot.accept()
    settings = Settings(**overrides)  # type: ignore[arg-type]

    if args.command == "token":
        return _print_token(settings, args.name, args.ttl)
    if args.command == "dev-issuer":
        return _run_dev_issuer(settings)
    if args.command == "dev":
        from ops.dev import run_dev
        from ops.ports import pdp_http_port_from_environment

        pdp_http_port = args.pdp_http_port or pdp_http_port_from_environment()
        return run_dev(
            settings,
            args.cerbos,
            args.bao,
            pdp_http_port,
            args.store,
            replicas=args.replicas,
            env_file=args.env_file,
        )
    if args.command == "stdio":
        from ops.stdio import run_stdio

        return run_stdio(settings, args.name)
    if args.command == "access-report":
        from ops import access_report

        return access_report.main(settings, args.out_dir or access_report.OUT_DIR)
    if args.command == "access-diff":
        from ops import access_diff

        return access_diff.main(args.cerbos, args.ref, settings, repo=args.repo)
    if args.command == "vault-bootstrap":
        database = None
        if args.database_admin_file is not None:
            from ops.vault_bootstrap import DatabaseSetup

            database = DatabaseSetup(
                settings.database_url, args.database_admin_user, args.database_admin_file
            )
        return _vault_bootstrap(
            settings, args.admin_token_file, args.out_dir, args.database_password_file, database
        )
    return _identities(settings, args.admin_token_file, args.bao)


def _scaffold(args: argparse.Namespace) -> int:
    import subprocess

    from ops import scaffold

    try:
        if args.command == "new-tool":
            changes = scaffold.new_tool(args.name, args.capability, kind=args.kind)
        else:
            changes = scaffold.new_capability(
                args.name, identity=args.identity, department=args.department
            )
    except scaffold.ScaffoldError as refused:
        print(f"refused: {refused}", file=sys.stderr)
        return 2
    # What is generated from the declarations, in a fresh interpreter that sees the new code.
    generated = subprocess.run(
        [sys.executable, "-m", "ops", "generate"], capture_output=True, text=True, check=False
    )
    for line in [*changes.files(), *generated.stdout.splitlines(), *changes.notes]:
        print(line)
    if generated.returncode != 0:
        print(generated.stderr, file=sys.stderr)
        return generated.returncode
    if args.command == "new-tool":
        # The reviewed tool snapshot gains exactly the tool just written (its entry shows in
        # the diff); a change to any other tool still needs `make accept-tools`.
        accepted = subprocess.run(  # noqa: S603 - our interpreter, a validated tool name
            [sys.executable, "-m", "ops", "accept-tools", "--new", args.name],
            capture_output=True,
            text=True,
            check=False,
        )
        print(accepted.stdout, end="")
        if accepted.returncode != 0:
            print(accepted.stderr, file=sys.stderr)
            return accepted.returncode
    return 0


def _clean() -> int:
    from ops.statedir import clean, state_dir

    directory = state_dir()
    removed = clean(directory)
    print(f"removed from {directory}: {', '.join(removed)}" if removed else "nothing to remove")
    return 0


def _vault_bootstrap(
    settings: Settings,
    admin_token_file: Path,
    out_dir: Path | None,
    database_password_file: Path | None = None,
    database: DatabaseSetup | None = None,
) -> int:
    from ops.vault_admin import admin_client, read_token_file
    from ops.vault_bootstrap import BootstrapConfig, bootstrap, export_database_password

    admin = admin_client(settings, read_token_file(admin_token_file))
    result = bootstrap(
        admin,
        out_dir=out_dir or settings.vault_role_id_file.parent,
        capabilities=registry.load(settings.capabilities),
        config=BootstrapConfig.from_settings(settings),
        database=database,
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
    from ops import devstack
    from ops.identity_report import (
        read_database_roles,
        read_identities,
        render,
        render_database_roles,
    )
    from ops.postgres_server import start_postgres
    from ops.vault_admin import admin_client, read_token_file
    from ops.vault_bootstrap import DatabaseSetup, bootstrap

    def report(admin: Any) -> None:
        identities = read_identities(
            admin,
            approle_mount=settings.vault_approle_mount,
            server_role=settings.vault_approle_role,
            role_prefix=settings.vault_role_prefix,
        )
        print(render(identities))
        print()
        roles = read_database_roles(admin, identities, mount=settings.vault_database_mount)
        print(render_database_roles(roles))

    if admin_token_file is not None:
        report(admin_client(settings, read_token_file(admin_token_file)))
        return 0
    assert bao is not None
    with tempfile.TemporaryDirectory(prefix="identities-") as workdir:
        # A throw-away OpenBao and PostgreSQL (from the pinned wheel), bootstrapped from the
        # registered capabilities, so the database roles are listed with their live grants too.
        postgres = start_postgres()
        try:
            vault = devstack.start_openbao(bao, workdir=Path(workdir) / "bao")
            try:
                local = settings.model_copy(update={"vault_address": vault.address})
                admin = admin_client(local, vault.root_token)
                bootstrap(
                    admin,
                    out_dir=Path(workdir) / "credential",
                    capabilities=registry.load(settings.capabilities),
                    database=DatabaseSetup(
                        postgres.url(), postgres.owner, postgres.owner_password_file
                    ),
                )
                print(
                    f"# Identities as the registered capabilities declare them (throw-away "
                    f"OpenBao {vault.address}, PostgreSQL on port {postgres.port})"
                )
                report(admin)
            finally:
                vault.process.stop()
        finally:
            postgres.remove()
    return 0


def _dev_issuer(settings: Settings):  # type: ignore[no-untyped-def]
    from ops.dev_issuer import DevIssuer

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


if __name__ == "__main__":
    raise SystemExit(main())
