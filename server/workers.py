"""Several worker processes behind one listening socket: ``serve --workers N`` (``MCP_WORKERS``).

One Python process serves on one core. With ``workers > 1`` a supervisor binds the socket once and
starts N worker processes (``python -m server worker``) that inherit it; the kernel hands each new
connection to one of them. Each worker is a whole server: its own runtime, PDP channel, decision
cache, rate limiter, store connections, Vault login and child tokens.

The Vault bootstrap credential. An AppRole secret id arrives response-wrapped, and a wrapping
token works once. So the supervisor unwraps it, once (with the same tamper check as a single
server, deleting the file), and hands role id and secret id to each worker through a pipe the
worker inherits: never through the environment or argv, which other local users and child
processes can read. Each worker logs in with it (the server's AppRole allows reuse of the secret
id, as a single server needs for its re-logins). Token-file and JWT logins need nothing handed
over: every worker reads its file itself.

Startup is sequential where it matters: the first worker starts alone and creates the tables and
demo rows, then the others start. The supervisor exits when any worker exits (after stopping the
others), so a broken worker is a failed service that the process manager restarts, never a
server running at part capacity unnoticed. SIGTERM or SIGINT to the supervisor stops the workers
gracefully.

What does not carry over between workers, by design of the protocol or of this template:

- Legacy (2025-11-25) MCP sessions live in the memory of the worker that created them. A
  client's later requests reach the same worker only while they travel on the same keep-alive
  connection; a request on a new connection (a reconnect, a second HTTP connection of the same
  client, an SSE stream) may land on another worker, which answers "session not found". The
  2026-07-28 protocol is stateless and unaffected. Serve legacy-session clients with one worker
  per instance, behind a load balancer that pins sessions (``Mcp-Session-Id``) to an instance.
- Rate limits and the decision cache are per worker: N workers admit up to N times
  ``MCP_RATE_LIMIT_PER_SECOND`` per principal.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from server.settings import Settings
from server.vault.client import ClientLabel, VaultRequestLog, close_client, make_client
from server.vault.identities import AppRoleLogin, endpoint_from, server_login_from

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0


class WorkerFailed(RuntimeError):
    pass


# --- the supervisor ------------------------------------------------------------------------------


@dataclass
class Worker:
    number: int
    process: subprocess.Popen[bytes]
    ready_fd: int  # the read end: one byte once the worker serves, EOF if it failed


def supervise(settings: Settings, env_file: Path | None = None) -> int:
    """Bind, start ``settings.workers`` workers, and wait; the exit status of the service."""
    credential = _unwrapped_credential(settings)
    listener = _bind(settings)
    workers: list[Worker] = []
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for number in range(1, settings.workers + 1):
            workers.append(_start_worker(number, listener, credential, env_file))
            # The first worker creates the tables and demo rows alone; the others wait for it.
            if number == 1:
                _wait_ready(workers[0])
        for worker in workers[1:]:
            _wait_ready(worker)
        log.info(
            "serving MCP on http://%s:%s%s with %d workers",
            settings.host,
            settings.port,
            settings.path,
            len(workers),
        )
        while not stopping:
            for worker in workers:
                code = worker.process.poll()
                if code is not None:
                    raise WorkerFailed(f"worker {worker.number} exited with status {code}")
            time.sleep(0.2)
        return 0
    except WorkerFailed as failure:
        log.error("%s: stopping every worker", failure)
        return 1
    finally:
        listener.close()
        _stop_all(workers)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _unwrapped_credential(settings: Settings) -> tuple[str, str] | None:
    """For AppRole: unwrap the secret id once, here, for every worker. Otherwise nothing."""
    login = server_login_from(settings)
    if not isinstance(login, AppRoleLogin):
        return None
    endpoint = endpoint_from(settings)
    requests_log = VaultRequestLog()
    unauthenticated = make_client(
        endpoint, None, label=ClientLabel("unauthenticated"), requests_log=requests_log
    )

    def client_for(token: str) -> Any:
        return make_client(endpoint, token, label=ClientLabel("server"), requests_log=requests_log)

    try:
        return login.credential(unauthenticated, client_for)
    finally:
        close_client(unauthenticated)


def _bind(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((settings.host, settings.port))
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


def _start_worker(
    number: int,
    listener: socket.socket,
    credential: tuple[str, str] | None,
    env_file: Path | None,
) -> Worker:
    ready_read, ready_write = os.pipe()
    fds = [listener.fileno(), ready_write]
    argv = [
        sys.executable,
        "-m",
        "server",
        *(["--env-file", str(env_file)] if env_file is not None else []),
        "worker",
        "--number",
        str(number),
        "--listen-fd",
        str(listener.fileno()),
        "--ready-fd",
        str(ready_write),
    ]
    pipe = os.pipe() if credential is not None else None
    if pipe is not None:
        fds.append(pipe[0])
        argv += ["--credential-fd", str(pipe[0])]
    process = subprocess.Popen(argv, pass_fds=fds)  # noqa: S603 - our own module
    os.close(ready_write)
    if pipe is not None and credential is not None:
        os.close(pipe[0])
        role_id, secret_id = credential
        with os.fdopen(pipe[1], "w") as writer:
            json.dump({"role_id": role_id, "secret_id": secret_id}, writer)
    return Worker(number, process, ready_read)


def _wait_ready(worker: Worker) -> None:
    fd = worker.ready_fd
    try:
        readable, _, _ = select.select([fd], [], [], STARTUP_TIMEOUT_SECONDS)
        signal_byte = os.read(fd, 1) if readable else b""
    finally:
        os.close(fd)
    if signal_byte != b"1":
        code = worker.process.poll()
        raise WorkerFailed(
            f"worker {worker.number} did not start"
            + (f" (exit status {code})" if code is not None else " in time")
        )


def _stop_all(workers: Sequence[Worker]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for worker in workers:
        try:
            worker.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop in time: killing it", worker.number)
            worker.process.kill()
            worker.process.wait()


# --- one worker ----------------------------------------------------------------------------------


class _SignallingServer(uvicorn.Server):
    """Writes one byte to ``ready_fd`` once the lifespan has started and the socket serves."""

    def __init__(self, config: uvicorn.Config, ready_fd: int, number: int) -> None:
        super().__init__(config)
        self.ready_fd = ready_fd
        self.number = number

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info("worker %d ready (pid %d)", self.number, os.getpid())
            os.write(self.ready_fd, b"1")
        os.close(self.ready_fd)


def run_worker(
    settings: Settings, *, number: int, listen_fd: int, ready_fd: int, credential_fd: int | None
) -> int:
    """Serve on the inherited socket until told to stop."""
    from server.app import create_http_app, create_server
    from server.runtime import build_runtime, tune_garbage_collection

    login = None
    if credential_fd is not None:
        with os.fdopen(credential_fd) as pipe:
            given = json.load(pipe)
        login = AppRoleLogin.from_credential(
            given["role_id"],
            given["secret_id"],
            mount=settings.vault_approle_mount,
            role=settings.vault_approle_role,
        )
    runtime = build_runtime(settings, login=login)
    mcp = create_server(settings, runtime=runtime)
    listener = socket.socket(fileno=listen_fd)
    config = uvicorn.Config(
        create_http_app(mcp, settings),
        log_level="warning",
        server_header=False,
        # As for one process: the app decides whose X-Forwarded-* headers to believe.
        proxy_headers=False,
    )
    tune_garbage_collection(settings)
    server = _SignallingServer(config, ready_fd, number)
    server.run(sockets=[listener])
    if not server.started:
        return 3
    log.info("worker %d stopped", number)
    return 0
