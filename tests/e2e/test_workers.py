"""``python -m server serve --workers N``: N server processes on one socket, one unwrapped
bootstrap credential handed to each through a pipe, and one service that stops as a whole."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import load
from ops.devstack import PDP, ManagedProcess, spawn, wait_until
from server.settings import Settings

WORKERS = 2
SECRET_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def environment(settings: Settings) -> dict[str, str]:
    """The settings a test would build, as the environment an operator would set."""
    names = (
        "transport",
        "port",
        "auth_issuer",
        "auth_jwks_url",
        "auth_audience",
        "pdp_address",
        "database_url",
        "rate_limit_per_second",
        "rate_limit_burst",
        "vault_address",
        "vault_role_id_file",
        "vault_wrapped_secret_id_file",
    )
    return {f"MCP_{name.upper()}": str(getattr(settings, name)) for name in names}


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def served(
    pdp: PDP, make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[ManagedProcess, Settings]]:
    settings = make_settings(pdp)
    process = spawn(
        "workers",
        [sys.executable, "-m", "server", "serve", "--workers", str(WORKERS)],
        log_path=tmp_path / "server.log",
        env=environment(settings),
        unset_prefixes=("MCP_", "VAULT_"),
    )
    try:
        wait_until(
            lambda: process.alive() and ready(f"{settings.base_url}/healthz"),
            timeout=90,
            what="workers",
        )
        # Every worker has started (the supervisor says so once all of them are ready).
        wait_until(
            lambda: f"with {WORKERS} workers" in (tmp_path / "server.log").read_text(),
            timeout=60,
            what="all workers",
        )
        yield process, settings
    finally:
        process.stop(timeout=40)


def call(settings: Settings, token: str) -> Any:
    """One tools/call on a connection of its own (so the kernel picks a worker each time)."""
    headers, body = load.call_tool("get_ticket", {"ticket_id": 1}, token)
    with httpx.Client(timeout=30) as http:
        return http.post(settings.resource_url, content=body, headers=headers)


def test_every_worker_serves_with_its_own_login_from_one_unwrapped_credential(
    served: tuple[ManagedProcess, Settings], token: Callable[..., str]
) -> None:
    process, settings = served
    workers = children(process.pid)
    assert len(workers) == WORKERS
    # The wrapped secret id was unwrapped once, by the supervisor, and is gone from disk.
    assert not settings.vault_wrapped_secret_id_file.exists()
    # Each worker got it through an inherited pipe: not in its argv, not in its environment.
    for pid in workers:
        for place in ("cmdline", "environ"):
            assert not SECRET_ID.search(Path(f"/proc/{pid}/{place}").read_bytes())
    bearer = token("alice")
    answers = [call(settings, bearer) for _ in range(20)]
    assert all(load.succeeded(answer) for answer in answers)


def test_stopping_the_supervisor_stops_every_worker(
    served: tuple[ManagedProcess, Settings],
) -> None:
    process, _ = served
    workers = children(process.pid)
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(40) == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_a_worker_that_dies_takes_the_service_down_rather_than_leaving_it_half_served(
    served: tuple[ManagedProcess, Settings],
) -> None:
    process, _ = served
    first, *others = children(process.pid)
    os.kill(first, signal.SIGKILL)
    assert process.process.wait(40) == 1
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in others) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in others if Path(f"/proc/{pid}").exists()]
