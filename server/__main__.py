"""Run the MCP server: ``python -m server [--env-file FILE] serve [--transport stdio] [--port N]
[--workers N]``.

Streamable HTTP on ``MCP_HOST:PORT`` + ``MCP_PATH`` by default, or stdio. With more than one
worker (``--workers``, ``MCP_WORKERS``) a supervisor starts that many server processes on one
socket (``server/workers.py``; ``worker`` is the command it runs them with). Development and
operator commands (the local stack, tokens, the Vault bootstrap, reports, scaffolding) live in
``python -m ops``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from server import workers
from server.app import create_http_app, create_server
from server.runtime import tune_garbage_collection
from server.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    parser.add_argument("--env-file", type=Path, help="dotenv file of settings; real env vars win")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the MCP server (the default)")
    serve.add_argument("--transport", choices=["http", "stdio"])
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="server processes on one socket")
    worker = commands.add_parser("worker", help=argparse.SUPPRESS)
    worker.add_argument("--number", type=int, required=True)
    worker.add_argument("--listen-fd", type=int, required=True)
    worker.add_argument("--ready-fd", type=int, required=True)
    worker.add_argument("--credential-fd", type=int)
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
    if getattr(args, "workers", None) is not None:
        overrides["workers"] = args.workers
    if args.env_file is not None:
        overrides["_env_file"] = args.env_file
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if args.command == "worker":
        return workers.run_worker(
            settings,
            number=args.number,
            listen_fd=args.listen_fd,
            ready_fd=args.ready_fd,
            credential_fd=args.credential_fd,
        )
    if settings.transport == "http" and settings.workers > 1:
        return workers.supervise(settings, args.env_file)
    serve_forever(settings)
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
    app = create_http_app(mcp, settings)
    tune_garbage_collection(settings)
    uvicorn.run(
        app,
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
