"""The development OpenBao of ``make dev``: persistent (raft storage under the state directory),
auto-unsealed by a static key file, initialised once.

Why not ``bao server -dev``: a dev server keeps everything in memory, so every restart lost the
transit keys that encrypt the demo database's contact details, and its console log holds the
root token and the unseal key. This one keeps its data across restarts, and its log holds
neither:

- first start: a random 32-byte key is written to ``unseal.key`` (0600); OpenBao starts with
  ``seal "static"`` pointing at it, is initialised once through the API, and the root token from
  that answer goes straight to ``root-token`` (0600). Nothing prints it.
- every later start: OpenBao unseals itself with the key file; the root token is read back from
  its file for the (idempotent) bootstrap.

Development only: a root token and the key that unseals everything sit in files readable by your
user. Production keeps the unseal key in a KMS or HSM and never stores a root token.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ops.devstack import ManagedProcess, spawn, wait_until

KEY_FILE: Final = "unseal.key"
ROOT_TOKEN_FILE: Final = "root-token"  # noqa: S105 - a file name
CONFIG_FILE: Final = "openbao.hcl"
LOG_FILE: Final = "bao.log"


class DevVaultError(SystemExit):
    """The development OpenBao cannot be used as it is; the message says why and what to do."""


@dataclass
class DevVault:
    process: ManagedProcess
    address: str
    workdir: Path
    root_token: str = field(repr=False)
    initialised_now: bool

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_FILE

    @property
    def root_token_file(self) -> Path:
        return self.workdir / ROOT_TOKEN_FILE


def write_private(path: Path, content: bytes) -> None:
    """Create ``path`` with mode 0600 and ``content``; never overwrite an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(content)


def render_config(workdir: Path, port: int) -> str:
    return f"""# Development OpenBao of `make dev` (written at every start; edits are lost).
storage "raft" {{
  path                   = "{workdir / "raft"}"
  node_id                = "dev"
  performance_multiplier = 1
}}
seal "static" {{
  current_key_id = "dev-1"
  current_key    = "file://{workdir / KEY_FILE}"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{port + 1}"
  tls_disable     = true
}}
api_addr     = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{port + 1}"
ui           = false
"""


def health_status(address: str) -> int:
    """200 active, 429 standby, 501 not initialised, 503 sealed; OSError when nothing answers."""
    try:
        with urllib.request.urlopen(f"{address}/v1/sys/health", timeout=1) as response:  # noqa: S310 - our loopback URL
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _initialise(address: str) -> str:
    """Initialise with one recovery share (auto-unseal) and return the root token."""
    request = urllib.request.Request(  # noqa: S310 - our loopback URL
        f"{address}/v1/sys/init",
        data=json.dumps({"recovery_shares": 1, "recovery_threshold": 1}).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        answer: dict[str, Any] = json.loads(response.read())
    return str(answer["root_token"])


def start_dev_openbao(bao: Path, *, workdir: Path, port: int, timeout: float = 60) -> DevVault:
    """Start (and on first use initialise) the persistent development OpenBao on
    127.0.0.1:port (cluster port + 1); return once it is unsealed and active."""
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (workdir / "raft").mkdir(exist_ok=True, mode=0o700)
    (workdir / "home").mkdir(exist_ok=True, mode=0o700)
    key = workdir / KEY_FILE
    token_file = workdir / ROOT_TOKEN_FILE
    if not key.exists():
        if any((workdir / "raft").iterdir()):
            raise DevVaultError(
                f"OpenBao's data in {workdir / 'raft'} has lost its unseal key {key}: "
                "`make clean` starts over (it deletes the development data)"
            )
        write_private(key, secrets.token_bytes(32))
    (workdir / CONFIG_FILE).write_text(render_config(workdir, port))
    log_path = workdir / LOG_FILE
    if not any((workdir / "raft").iterdir()):
        # A log from before persistent storage is a dev server's console: it printed that
        # server's (long dead) root token and unseal key. Start this one's log clean.
        log_path.unlink(missing_ok=True)
    process = spawn(
        "openbao",
        [str(bao), "server", f"-config={workdir / CONFIG_FILE}", "-log-level=warn"],
        log_path=log_path,
        # HOME inside workdir, no VAULT_*/BAO_* inherited: never a developer's real token or Vault.
        env={"HOME": str(workdir / "home")},
        unset_prefixes=("VAULT_", "BAO_"),
    )
    address = f"http://127.0.0.1:{port}"
    try:
        status: list[int] = []

        def answers() -> bool:
            if not process.alive():
                raise DevVaultError(f"OpenBao exited at start:\n{process.log_tail()}")
            status[:] = [health_status(address)]
            return True

        wait_until(answers, timeout=timeout, what="OpenBao")
        initialised_now = status[0] == 501
        if initialised_now:
            if token_file.exists():
                raise DevVaultError(
                    f"{token_file} exists but OpenBao in {workdir} is not initialised: "
                    "`make clean` starts over"
                )
            write_private(token_file, (_initialise(address) + "\n").encode())
        elif not token_file.exists():
            raise DevVaultError(
                f"OpenBao in {workdir} is initialised but its root token file {token_file} is "
                "gone: `make clean` starts over (it deletes the development data)"
            )
        wait_until(
            lambda: process.alive() and health_status(address) == 200,
            timeout=timeout,
            what="OpenBao (unsealed and active)",
        )
    except BaseException:
        process.stop()
        raise
    return DevVault(
        process=process,
        address=address,
        workdir=workdir,
        root_token=token_file.read_text().strip(),
        initialised_now=initialised_now,
    )
