"""``make dev`` as a developer runs it: the real ``python -m ops dev`` in its own process, with
the real binaries, on free ports moved by the documented variables, with HOME and the state
directory in a temporary folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from ops.dev_issuer import DevIssuer
from ops.devstack import free_port, free_port_pair, wait_until
from tests.support import ROOT

AUDIENCE = "mcp-server-template"
OWN_VARIABLES = ("MCP_", "VAULT_", "BAO_")
PORT_VARIABLES = ("PORT", "PDP_GRPC_PORT", "PDP_HTTP_PORT", "OPENBAO_PORT", "ISSUER_PORT")


def free_dev_ports() -> dict[str, str]:
    ports: dict[str, int] = {"OPENBAO_PORT": free_port_pair()}
    for name in PORT_VARIABLES:
        while name not in ports:
            port = free_port()
            taken = {*ports.values(), ports["OPENBAO_PORT"] + 1}
            if port not in taken:
                ports[name] = port
    return {name: str(port) for name, port in ports.items()}


def dev_environment(base: Path, ports: dict[str, str]) -> dict[str, str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(OWN_VARIABLES) and k not in (*PORT_VARIABLES, "DEV_STATE_DIR")
    }
    (base / "home").mkdir(parents=True, exist_ok=True)
    return {
        **inherited,
        **ports,
        "HOME": str(base / "home"),
        "DEV_STATE_DIR": str(base / "state"),
    }


def ops_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ops", "--env-file", "config/dev/dev.env", *args]


@dataclass
class DevStack:
    """One ``python -m ops dev`` process (started, stopped and started again on demand)."""

    base: Path
    cerbos: Path
    bao: Path
    env: dict[str, str]
    runs: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def state(self) -> Path:
        return Path(self.env["DEV_STATE_DIR"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}/mcp"

    @property
    def issuer_url(self) -> str:
        return f"http://127.0.0.1:{self.env['ISSUER_PORT']}"

    def output(self, run: int | None = None) -> tuple[Path, Path]:
        run = self.runs if run is None else run
        return self.base / f"dev-{run}.out", self.base / f"dev-{run}.err"

    def dev_args(self) -> list[str]:
        return ["dev", "--cerbos", str(self.cerbos), "--bao", str(self.bao)]

    def start(self, timeout: float = 120) -> DevStack:
        self.runs += 1
        out, err = self.output()
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.process = subprocess.Popen(
                ops_command(*self.dev_args()),
                cwd=ROOT,
                env=self.env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        process = self.process

        def serving() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"make dev exited {process.returncode}:\n{err.read_text()}")
            return answers(self.url)

        wait_until(serving, timeout=timeout, what="make dev", interval=0.2)
        return self

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C, as a developer stops it; the exit status."""
        process = self.process
        if process is None:
            return 0
        self.process = None
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
                raise
        return process.returncode

    def run_ops(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ops_command(*args),
            cwd=ROOT,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def token(self, name: str) -> str:
        return DevIssuer(self.state / "issuer", self.issuer_url).token_for(name, audience=AUDIENCE)

    def client(self, name: str) -> Client[Any]:
        return Client(StreamableHttpTransport(self.url, auth=self.token(name)))


def answers(url: str) -> bool:
    """Anything that answers HTTP at ``url`` (an unauthenticated request gets 401)."""
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback URL we built
            return True
    except urllib.error.HTTPError:
        return True
