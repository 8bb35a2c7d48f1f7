"""Run the MCP server: ``python -m server [--env-file FILE] serve [--transport stdio] [--port N]``.

Streamable HTTP on ``MCP_HOST:PORT`` + ``MCP_PATH`` by default, or stdio. Development and
operator commands (the local stack, tokens, the Vault bootstrap, reports, scaffolding) live in
``python -m ops``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from server.app import create_http_app, create_server
from server.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    parser.add_argument("--env-file", type=Path, help="dotenv file of settings; real env vars win")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the MCP server (the default)")
    serve.add_argument("--transport", choices=["http", "stdio"])
    serve.add_argument("--port", type=int)
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
    serve_forever(Settings(**overrides))  # type: ignore[arg-type]
    return 0


def serve_forever(settings: Settings) -> None:
    mcp = create_server(settings)
    if settings.transport == "stdio":
        mcp.run(transport="stdio", show_banner=False)
        return
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
        # The app decides whose X-Forwarded-* headers to believe (MCP_TRUSTED_PROXIES);
        # uvicorn's own default would trust them from any local process.
        proxy_headers=False,
    )


if __name__ == "__main__":
    raise SystemExit(main())
