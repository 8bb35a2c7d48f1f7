"""Where ``make dev`` keeps its state, the lock that marks a running stack, and the deliberate
reset (``make clean``).

The state directory is ``DEV_STATE_DIR`` (default ``.dev``, relative to the working directory
like every path in ``config/dev/dev.env``)::

    dev.lock        held (flock) by the running `make dev`; holds its pid
    data/           the demo database
    vault/          OpenBao: raft storage, its auto-unseal key, the root token (0600 files),
                    its log; credential/ holds the server's role id and wrapped secret id
    cerbos/         the PDP's log and decision log
    issuer/         the dev token issuer's signing key
    issuer.log
    replicas/       with REPLICAS=N: the log of each further server process
    access/         `make access-report`'s output (in .dev/ whatever DEV_STATE_DIR says)

Nothing in it is ever deleted by ``make dev``. ``make clean`` deletes exactly these entries, and
refuses while a stack holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Final

LOCK_FILE: Final = "dev.lock"
ENTRIES: Final = (
    "data",
    "vault",
    "cerbos",
    "issuer",
    "issuer.log",
    "replicas",
    "access",
    LOCK_FILE,
)


def state_dir() -> Path:
    value = os.environ.get("DEV_STATE_DIR", "").strip() or ".dev"
    return Path(value).resolve()


class StackRunning(SystemExit):
    """Another stack holds the state directory; the message says which and what to do."""


class StateLock:
    """An exclusive, non-blocking flock on ``<state dir>/dev.lock``, held for the life of the
    process that took it (the kernel releases it when that process ends, however it ends)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, *, command: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StackRunning(
                f"{command}: a development stack (pid {holder(self.directory) or '?'}) is using "
                f"{self.directory}: stop it first (Ctrl-C in its terminal)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder(directory: Path) -> int | None:
    """The pid of the stack holding ``directory``'s lock, or None when no stack holds it.

    Creates nothing: a state directory without a lock file has no stack running on it."""
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = path.read_text().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def clean(directory: Path) -> list[str]:
    """Delete the development state; refuse (StackRunning) while a stack runs on it.

    Returns what was removed. Only the entries ``make dev`` creates are touched; anything else
    in the directory stays (and so does the directory)."""
    if not directory.is_dir():
        return []
    lock = StateLock(directory)
    lock.acquire(command="make clean")
    removed = []
    try:
        for name in ENTRIES:
            path = directory / name
            if name == LOCK_FILE or not (path.exists() or path.is_symlink()):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(name)
    finally:
        lock.release()
    (directory / LOCK_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()  # only when nothing else is left in it
    return removed
