"""Command line: ``python -m server <command>``.

serve        run the MCP server (streamable HTTP on 127.0.0.1:$PORT/mcp, or --transport stdio)
dev-issuer   run the local token issuer (JWKS + discovery) at MCP_AUTH_ISSUER   [development]
token NAME   print a bearer token for a demo principal                           [development]
dev          start the Cerbos PDP and the dev issuer, then serve; Ctrl-C stops all [development]
"""

from __future__ import annotations

import argparse
import logging
import sys
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
    dev = commands.add_parser("dev", help="run PDP + dev issuer + server together")
    dev.add_argument("--cerbos", type=Path, required=True, help="path of the cerbos binary")
    dev.add_argument("--pdp-http-port", type=int, default=3592)
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
        return _run_dev(settings, args.cerbos, args.pdp_http_port)
    return _serve(settings)


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


def _run_dev(settings: Settings, cerbos: Path, pdp_http_port: int) -> int:
    from server import devstack

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
                issuer=settings.auth_issuer,
                tracing=_tracing_line(settings),
            ),
            flush=True,
        )
        return _serve(settings)
    finally:
        for process in reversed(processes):
            process.stop()


def _tracing_line(settings: Settings) -> str:
    if settings.otel_exporter == "otlp":
        return f"server and PDP spans to {settings.otel_traces_endpoint}"
    if settings.otel_exporter == "console":
        return "server spans printed to stderr (PDP spans need MCP_OTEL_EXPORTER=otlp)"
    return "off (MCP_OTEL_EXPORTER=console or otlp turns it on; see README, Tracing)"


DEV_BANNER = """
  MCP server (development)   {url}
  Cerbos PDP                 {pdp}   decision log: {audit}
  Dev token issuer           {issuer}
  Tracing                    {tracing}

  Get a token:     make token user=alice      (alice bob carol dave erin mallory)
  Connect:         Authorization: Bearer <token>   (see README, "Connect a client")
  Stop:            Ctrl-C stops the server, the PDP and the issuer.
"""


if __name__ == "__main__":
    raise SystemExit(main())
