"""Local processes for development and tests: the Cerbos PDP, an OpenBao dev server and the dev
token issuer.

``make dev`` runs ``python -m ops dev``, which starts them as child processes, serves MCP in
the foreground and stops the children when it exits (Ctrl-C). The test fixtures use the same
launchers on free ports.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import uvicorn

from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PDP_CONFIG = ROOT / "config" / "cerbos" / "config.yaml"
POLICIES = ROOT / "policies"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``check`` until it is true; raise with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.1f}s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback URLs we built
        return bool(response.status == 200)


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5) -> None:
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path | None,
    env: Mapping[str, str] | None = None,
    unset_prefixes: Sequence[str] = (),
    cwd: Path = ROOT,
) -> ManagedProcess:
    out: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch(mode=0o600)
        out = log_path.open("ab")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(tuple(unset_prefixes))}
    process = subprocess.Popen(  # noqa: S603 - argv built from our own paths
        list(argv),
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env={**inherited, **(env or {})},
    )
    return ManagedProcess(name, process, log_path)


@dataclass
class PDP:
    process: ManagedProcess
    grpc_address: str
    http_url: str
    audit_log: Path

    def healthy(self) -> bool:
        return http_ok(f"{self.http_url}/_cerbos/health")


def start_pdp(
    cerbos: Path,
    *,
    workdir: Path,
    policies: Path = POLICIES,
    grpc_port: int | None = None,
    http_port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 20,
    grpc_socket: Path | None = None,
) -> PDP:
    """Start ``cerbos server`` with config/cerbos/config.yaml on the given (or free) ports.

    ``grpc_socket``: serve gRPC on that Unix socket instead of a TCP port (as a sidecar beside
    the server would); HTTP (health) stays on TCP.
    """
    grpc_port = grpc_port or free_port()
    http_port = http_port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    audit_log = workdir / "audit.log"
    grpc_listen = f"unix:{grpc_socket}" if grpc_socket else f"127.0.0.1:{grpc_port}"
    process = spawn(
        "cerbos",
        [
            str(cerbos),
            "server",
            f"--config={PDP_CONFIG}",
            "--log-level=warn",
            f"--set=server.grpcListenAddr={grpc_listen}",
            f"--set=server.httpListenAddr=127.0.0.1:{http_port}",
            f"--set=storage.disk.directory={policies}",
            f"--set=audit.file.path={audit_log}",
        ],
        log_path=workdir / "cerbos.log",
        env={"CERBOS_NO_TELEMETRY": "1", **(env or {})},
    )
    pdp = PDP(process, grpc_listen, f"http://127.0.0.1:{http_port}", audit_log)
    try:
        wait_until(lambda: process.alive() and pdp.healthy(), timeout=timeout, what="Cerbos PDP")
    except TimeoutError:
        process.stop()
        raise TimeoutError(f"Cerbos PDP did not start:\n{process.log_tail()}") from None
    return pdp


def pdp_tracing_env(settings: Settings) -> dict[str, str]:
    """Environment that makes the PDP export its spans where the server exports its own.

    Cerbos reads tracing settings only from these variables. Its default sampler,
    parentbased_always_off, records a request exactly when the server's span is sampled, so
    the PDP's spans always come with a server trace to hang under.
    """
    if settings.otel_exporter != "otlp" or not settings.otel_traces_endpoint:
        return {}
    return {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": settings.otel_traces_endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": settings.otel_protocol,
        "OTEL_SERVICE_NAME": "cerbos",
    }


def start_dev_issuer(
    *, workdir: Path, env: Mapping[str, str], jwks_url: str, timeout: float = 20
) -> ManagedProcess:
    process = spawn(
        "dev-issuer",
        [sys.executable, "-m", "ops", "dev-issuer"],
        log_path=workdir / "issuer.log",
        env=env,
    )
    try:
        wait_until(
            lambda: process.alive() and http_ok(jwks_url), timeout=timeout, what="dev token issuer"
        )
    except TimeoutError:
        process.stop()
        raise TimeoutError(f"dev issuer did not start:\n{process.log_tail()}") from None
    return process


class UvicornThread:
    """Runs an ASGI app with uvicorn on a loopback port in a background thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        # proxy_headers off: the app decides whose forwarded headers to believe
        # (MCP_TRUSTED_PROXIES); uvicorn's default would trust any local process.
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 20) -> UvicornThread:
        self.thread.start()
        wait_until(
            lambda: self.server.started or not self.thread.is_alive(),
            timeout=timeout,
            what="uvicorn",
        )
        if not self.server.started:
            raise RuntimeError("server failed to start (see log above)")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


# --- OpenBao -------------------------------------------------------------------------------------


@dataclass
class OpenBao:
    """A running OpenBao dev server: in memory, unsealed, with a root token (development only)."""

    process: ManagedProcess
    address: str
    root_token: str = field(repr=False)
    unseal_key: str = field(repr=False)

    def health_status(self) -> int:
        """200 active, 503 sealed, 501 not initialised; OSError when nothing listens."""
        try:
            with urllib.request.urlopen(f"{self.address}/v1/sys/health", timeout=1) as response:  # noqa: S310 - our loopback URL
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def healthy(self) -> bool:
        return self.health_status() == 200


def free_port_pair() -> int:
    """A port p such that p and p + 1 are free: a dev server also binds p + 1 (cluster port)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise OSError("no free pair of loopback ports")


def _audit_config(workdir: Path, audit_log: Path | None) -> list[str]:
    # Audit devices are declared in configuration only (not enabled through the API).
    if audit_log is None:
        return []
    config = workdir / "audit.hcl"
    config.write_text(f'audit "file" "main" {{\n  options {{ file_path = "{audit_log}" }}\n}}\n')
    return [f"-config={config}"]


def start_openbao(
    bao: Path,
    *,
    workdir: Path,
    port: int | None = None,
    timeout: float = 30,
    audit_log: Path | None = None,
) -> OpenBao:
    """Start ``bao server -dev`` on 127.0.0.1:port (and port + 1) with a random root token.

    ``audit_log``: also write Vault's own file audit log there (one line per request and
    response, secrets HMAC'd), e.g. to count requests where Vault sees them.

    HOME points into ``workdir`` and VAULT_*/BAO_* variables are not inherited, so the server
    and its CLI never touch a developer's real token file or real Vault. The root token is
    passed through the environment (argv is visible to every local user); the unseal key is read
    back from the server's log, which is created 0600.
    """
    port = port or free_port_pair()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "home").mkdir(exist_ok=True)
    root_token = secrets.token_urlsafe(24)
    log_path = workdir / "bao.log"
    log_path.unlink(missing_ok=True)
    process = spawn(
        "openbao",
        [
            str(bao),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            "-dev-no-store-token",
            "-log-level=warn",
            *_audit_config(workdir, audit_log),
        ],
        log_path=log_path,
        env={"HOME": str(workdir / "home"), "BAO_DEV_ROOT_TOKEN_ID": root_token},
        unset_prefixes=("VAULT_", "BAO_"),
    )
    address = f"http://127.0.0.1:{port}"
    bao_server = OpenBao(process, address, root_token, unseal_key="")
    try:
        wait_until(
            lambda: (
                process.alive() and bao_server.healthy() and "Unseal Key:" in log_path.read_text()
            ),
            timeout=timeout,
            what="OpenBao dev server",
        )
    except TimeoutError:
        process.stop()
        raise TimeoutError(f"OpenBao did not start:\n{_without_credentials(process)}") from None
    found = re.search(r"Unseal Key: (\S+)", log_path.read_text())
    bao_server.unseal_key = found.group(1) if found else ""
    return bao_server


def _without_credentials(process: ManagedProcess) -> str:
    return "\n".join(
        line for line in process.log_tail(40).splitlines() if not re.search(r"Key:|Token:", line)
    )
