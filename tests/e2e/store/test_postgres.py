"""The store on PostgreSQL (what compose runs): a real server, its password read from Vault only,
policy-derived SQL filters, encrypted personal data and money movement all work there too."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import hvac
import pytest

from ops.dev_issuer import demo_principals
from ops.devstack import PDP, ManagedProcess, free_port, spawn, wait_until
from ops.vault_bootstrap import export_database_password
from server.authz.decisions import ResourceRef
from server.authz.pdp import PolicyDecisionPoint
from server.edge.principal import principal_from_claims
from server.settings import Settings
from tests.support import GrpcServicerThread, RunningServer, start_server
from tools.tickets.models import TICKET


def postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if not found:
        pytest.fail(
            f"PostgreSQL server binaries not found ({name}): install the postgresql package"
        )
    return found


def as_postgres_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Postgres:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.data = workdir / "data"
        self.sockets = workdir / "run"
        self.sockets.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(workdir, "postgres")
            shutil.chown(self.sockets, "postgres")
        subprocess.run(
            as_postgres_user(
                [
                    postgres_bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.process: ManagedProcess = spawn(
            "postgres",
            as_postgres_user(
                [
                    postgres_bin("postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.sockets),
                    "-c",
                    "listen_addresses=127.0.0.1",
                ]
            ),
            log_path=None,
        )
        wait_until(lambda: accepts_connections(self.port), timeout=30, what="PostgreSQL")

    def sql(self, statement: str) -> None:
        subprocess.run(
            as_postgres_user(
                [
                    postgres_bin("psql"),
                    "-h",
                    str(self.sockets),
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    statement,
                ]
            ),
            check=True,
            capture_output=True,
        )


@pytest.fixture(scope="module")
def postgres(vault_admin: hvac.Client) -> Iterator[tuple[Postgres, str]]:
    # Not under pytest's temporary root: that is private to this user, and PostgreSQL runs as
    # its own user when the tests run as root.
    workdir = Path(tempfile.mkdtemp(prefix="mcp-postgres-"))
    database = Postgres(workdir)
    # The application user's password exists only in Vault (seeded by the bootstrap); the
    # database gets it the way compose gives it to its PostgreSQL: exported to a 0600 file.
    password_file = workdir / "db-password"
    export_database_password(vault_admin, password_file)
    assert password_file.stat().st_mode & 0o777 == 0o600
    password = password_file.read_text().strip()
    database.sql(f"CREATE ROLE mcp LOGIN PASSWORD '{password}'")
    database.sql("CREATE DATABASE mcp OWNER mcp")
    yield database, password
    database.process.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_server(
    postgres: tuple[Postgres, str],
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> Iterator[RunningServer]:
    database, _ = postgres
    url = f"postgresql+asyncpg://mcp@127.0.0.1:{database.port}/mcp"
    running = start_server(make_settings(pdp, database_url=url), token)
    yield running
    running.stop()


async def fetch(postgres: tuple[Postgres, str], query: str) -> list[dict[str, Any]]:
    database, password = postgres
    conn = await asyncpg.connect(
        host="127.0.0.1", port=database.port, user="mcp", password=password, database="mcp"
    )
    try:
        return [dict(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()


def test_the_database_password_is_nowhere_in_the_configuration(pg_server: RunningServer) -> None:
    assert "@" in pg_server.settings.database_url
    assert ":" not in pg_server.settings.database_url.split("//", 1)[1].split("@", 1)[0]
    assert pg_server.runtime.settings.database_password is not None  # it came from Vault


@pytest.mark.parametrize("who", ["alice", "bob", "carol", "erin"])
async def test_list_tickets_on_postgres_equals_per_row_decisions(
    pg_server: RunningServer, postgres: tuple[Postgres, str], pdp: PDP, who: str
) -> None:
    rows = await fetch(postgres, "SELECT * FROM ticket")
    refs = [
        ResourceRef("ticket", str(r["id"]), {k: r[c.key] for k, c in TICKET.columns.items()})
        for r in rows
    ]
    oracle = PolicyDecisionPoint(pdp.grpc_address, timeout_seconds=5, max_resources_per_request=200)
    await oracle.start()
    try:
        principal = principal_from_claims({"sub": who, **demo_principals()[who]})
        result = await oracle.check(
            principal, [(ref, ("view",)) for ref in refs], request_id="pg-oracle"
        )
    finally:
        await oracle.close()
    expected = {d.resource.id for d in result.decisions if d.allowed("view")}
    async with pg_server.client(who) as client:
        listed = (await client.call_tool("list_tickets", {"limit": 100})).structured_content[
            "tickets"
        ]
    assert {str(t["id"]) for t in listed} == expected
    assert (expected and len(expected) < len(rows)) or who == "erin"


async def test_writes_personal_data_and_confirmed_refunds_work_on_postgres(
    pg_server: RunningServer, postgres: tuple[Postgres, str]
) -> None:
    async def accept(
        message: str, response_type: Any, params: Any, context: Any
    ) -> dict[str, bool]:
        return {"confirm": True}

    await fetch(postgres, "UPDATE account SET balance_cents = 100000 WHERE id = 2 RETURNING id")
    async with pg_server.client("alice") as alice:
        created = await alice.call_tool("create_ticket", {"title": "Postgres says hello"})
    async with pg_server.client("carol", elicitation_handler=accept) as carol:
        account = (await carol.call_tool("get_account", {"account_id": 2})).structured_content
        refund = await carol.call_tool(
            "issue_refund", {"account_id": 2, "amount": "600.00", "reason": "Outage"}
        )
    assert created.structured_content["created_by"] == "alice"
    assert not account["pii_masked"] and "@" in account["email"]
    assert refund.structured_content["confirmed_by_human"] is True
    stored = await fetch(postgres, "SELECT email FROM account WHERE id = 2")
    assert stored[0]["email"].startswith("vault:v1:")  # only ciphertext at rest
    outbox = await fetch(postgres, "SELECT count(*) AS n FROM outbox")
    assert outbox[0]["n"] >= 1


async def test_two_concurrent_refunds_cannot_both_slip_under_the_limit_on_postgres(
    pg_server: RunningServer,
    postgres: tuple[Postgres, str],
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    """As on SQLite (tests/e2e/authz/test_refund_limits.py): both refunds are decided on a day's
    sum of 0; under READ COMMITTED the second write waits for the first and then finds the
    account's version moved, so it is rolled back."""
    from tests.e2e.authz.test_refund_limits import SlowRefundDecisions

    account = 4  # seeded, enough balance, refunded by no other test here
    with GrpcServicerThread(SlowRefundDecisions(pdp.grpc_address, delay=0.4)) as proxy:
        proxied = PDP(
            process=None,  # type: ignore[arg-type]
            grpc_address=f"127.0.0.1:{proxy.port}",
            http_url="",
            audit_log=pdp.audit_log,
        )
        settings = make_settings(
            proxied, database_url=pg_server.settings.database_url, pdp_timeout_seconds=3.0
        )
        server = start_server(settings, token)
        try:

            async def refund() -> Any:
                async with server.client("carol") as client:
                    return await client.call_tool(
                        "issue_refund",
                        {"account_id": account, "amount": "300.00", "reason": "Concurrent"},
                        raise_on_error=False,
                    )

            results = await asyncio.gather(refund(), refund())
        finally:
            server.stop()
    assert sorted(r.is_error for r in results) == [False, True]
    refused = next(r for r in results if r.is_error).content[0].text
    assert "changed while this request was being decided" in refused
    query = f"SELECT amount_cents FROM refund WHERE account_id = {account}"  # noqa: S608
    rows = await fetch(postgres, query)
    assert [r["amount_cents"] for r in rows] == [30_000]
