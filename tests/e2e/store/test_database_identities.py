"""One database identity per capability (PostgreSQL): what each capability's short-lived login
may and may not do, through the tool code path and directly with the issued credential; logins
re-issued before they expire; revoked at shutdown; and a sealed Vault failing calls closed with
nothing changed. Real PostgreSQL (the pinned wheel), real OpenBao, real PDP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import hvac
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, text

from ops.devstack import PDP
from server.runtime import build_runtime
from server.settings import Settings
from server.store.core import Store, StoreNotPrepared
from server.store.credentials import DatabaseCredentials, DatabaseLogin
from tests.conftest import PostgresStack
from tests.support import CANARIES, RunningServer, as_owner, open_identities, start_server

PROBES = "tests.e2e.store.probe_capabilities"
DENIED = "42501"  # insufficient_privilege: "permission denied ..." / "must be owner of ..."


# --- what a login may do, statement by statement --------------------------------------------------

# (statement, expected outcome) for the tickets login; "ok" or the SQLSTATE. The accounts login
# gets the mirror image. Statements are harmless when allowed (WHERE false, count).
TICKETS_LOGIN: tuple[tuple[str, str], ...] = (
    ("SELECT count(*) FROM ticket", "ok"),
    ("SELECT count(*) FROM outbox", "ok"),
    ("UPDATE ticket SET priority = priority WHERE false", "ok"),
    ("DELETE FROM outbox WHERE false", "ok"),
    ("SELECT nextval('ticket_id_seq')", "ok"),
    ("SELECT count(*) FROM confirmation_use", "ok"),
    ("SELECT count(*) FROM account", DENIED),
    ("SELECT count(*) FROM refund", DENIED),
    ("UPDATE account SET plan = plan WHERE false", DENIED),
    ("DELETE FROM refund WHERE false", DENIED),
    (
        "INSERT INTO refund (account_id, amount_cents, reason, created_by, created_at) "
        "VALUES (1, 1, 'x', 'x', now())",
        DENIED,
    ),
    ("SELECT nextval('account_id_seq')", DENIED),
    ("UPDATE confirmation_use SET subject = subject WHERE false", DENIED),
    ("DELETE FROM confirmation_use WHERE false", DENIED),
    ("TRUNCATE ticket", DENIED),
    ("DROP TABLE ticket", DENIED),
    ("ALTER TABLE ticket ADD COLUMN smuggled text", DENIED),
    ("CREATE TABLE smuggled (x int)", DENIED),
    ("CREATE TEMP TABLE smuggled (x int)", DENIED),
    ("CREATE ROLE smuggled LOGIN", DENIED),
    ("SET ROLE mcp_owner", DENIED),
)
ACCOUNTS_LOGIN: tuple[tuple[str, str], ...] = (
    ("SELECT count(*) FROM account", "ok"),
    ("SELECT count(*) FROM refund", "ok"),
    ("UPDATE account SET plan = plan WHERE false", "ok"),
    ("DELETE FROM refund WHERE false", "ok"),
    ("SELECT nextval('account_id_seq')", "ok"),
    ("SELECT count(*) FROM confirmation_use", "ok"),
    ("SELECT count(*) FROM ticket", DENIED),
    ("SELECT count(*) FROM outbox", DENIED),
    ("UPDATE ticket SET priority = priority WHERE false", DENIED),
    ("DELETE FROM outbox WHERE false", DENIED),
    ("INSERT INTO outbox DEFAULT VALUES", DENIED),
    ("SELECT nextval('ticket_id_seq')", DENIED),
    ("UPDATE confirmation_use SET subject = subject WHERE false", DENIED),
    ("DELETE FROM confirmation_use WHERE false", DENIED),
    ("TRUNCATE account", DENIED),
    ("DROP TABLE account", DENIED),
    ("ALTER TABLE account ADD COLUMN smuggled text", DENIED),
    ("CREATE TABLE smuggled (x int)", DENIED),
    ("CREATE TEMP TABLE smuggled (x int)", DENIED),
    ("CREATE ROLE smuggled LOGIN", DENIED),
    ("SET ROLE mcp_owner", DENIED),
)


async def outcome_of(conn: asyncpg.Connection, statement: str) -> str:
    try:
        async with conn.transaction():
            await conn.execute(statement)
    except asyncpg.PostgresError as error:
        return str(error.sqlstate)
    return "ok"


async def connect(stack: PostgresStack, login: DatabaseLogin) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=stack.postgres.port,
        user=login.username,
        password=login.password,
        database=stack.postgres.database,
    )


async def owner_value(stack: PostgresStack, query: str, *args: Any) -> Any:
    async with as_owner(stack.postgres) as conn:
        return await conn.fetchval(query, *args)


@dataclass
class Logins:
    by_capability: dict[str, DatabaseLogin]
    credentials: dict[str, DatabaseCredentials]


@pytest.fixture
async def issued(
    postgres_stack: PostgresStack, pdp: PDP, make_settings: Callable[..., Settings]
) -> AsyncIterator[Logins]:
    """A login per capability, issued as the server issues them (through its identities)."""
    settings = make_settings(pdp, vault=postgres_stack.vault, database_url=postgres_stack.url)
    async with open_identities(settings) as identities:
        credentials = {
            name: DatabaseCredentials(identities, name, mount="database", role=f"mcp-{name}")
            for name in ("tickets", "accounts")
        }
        logins = {name: await c.current() for name, c in credentials.items()}
        CANARIES.extend(login.password for login in logins.values())  # never logged, anywhere
        yield Logins(logins, credentials)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [("tickets", TICKETS_LOGIN), ("accounts", ACCOUNTS_LOGIN)],
    ids=["tickets", "accounts"],
)
async def test_each_login_reaches_its_own_tables_only_statement_by_statement(
    issued: Logins,
    postgres_stack: PostgresStack,
    capability: str,
    expected: tuple[tuple[str, str], ...],
) -> None:
    conn = await connect(postgres_stack, issued.by_capability[capability])
    try:
        observed = [(statement, await outcome_of(conn, statement)) for statement, _ in expected]
    finally:
        await conn.close()
    print(f"\n{capability} login {issued.by_capability[capability].username}:")  # for the docs
    for statement, outcome in observed:
        print(f"  {'allowed' if outcome == 'ok' else 'DENIED ' + outcome:14} {statement}")
    assert observed == list(expected)


async def test_the_logins_are_distinct_database_users_that_inherit_nothing(
    issued: Logins, postgres_stack: PostgresStack
) -> None:
    tickets, accounts = issued.by_capability["tickets"], issued.by_capability["accounts"]
    assert tickets.username != accounts.username
    for login in (tickets, accounts):
        flags = await owner_value(
            postgres_stack,
            "SELECT (rolsuper, rolcreaterole, rolcreatedb, rolinherit, rolvaliduntil IS NOT NULL)"
            "::text FROM pg_roles WHERE rolname = $1",
            login.username,
        )
        assert flags == "(f,f,f,f,t)"  # no superuser, no CREATEROLE/CREATEDB, NOINHERIT, expires
        members = await owner_value(
            postgres_stack,
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
            "WHERE r.rolname = $1",
            login.username,
        )
        assert members == 0  # member of no role: nothing to inherit or SET ROLE to


async def test_a_store_whose_table_is_missing_or_not_granted_refuses_to_start_naming_it(
    issued: Logins, postgres_stack: PostgresStack
) -> None:
    store = Store(postgres_stack.url, login=issued.credentials["tickets"])
    foreign = Table("account", MetaData(), Column("id", Integer, primary_key=True))
    missing = Table("not_there", MetaData(), Column("id", Integer, primary_key=True))
    try:
        for table in (foreign, missing):
            with pytest.raises(StoreNotPrepared, match=f"table '{table.name}' is missing or not"):
                await store.start(tables=[table])
    finally:
        await store.close()


# --- through the tool code path -------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_server(
    postgres_stack: PostgresStack,
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> Iterator[RunningServer]:
    settings = make_settings(
        pdp, vault=postgres_stack.vault, database_url=postgres_stack.url, capabilities=PROBES
    )
    running = start_server(settings, token)
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("probe", "own", "foreign"),
    [
        ("tickets_probe", ("ticket", "outbox"), ("account", "refund")),
        ("accounts_probe", ("account", "refund"), ("ticket", "outbox")),
    ],
)
async def test_a_tool_reads_its_own_capabilitys_tables_and_is_denied_the_others(
    probe_server: RunningServer, probe: str, own: tuple[str, ...], foreign: tuple[str, ...]
) -> None:
    async with probe_server.client("dave") as admin:  # probes are admin-only tools
        answers = {
            table: (await admin.call_tool(probe, {"table": table})).structured_content
            for table in (*own, *foreign, "confirmation_use")
        }
    for table in (*own, "confirmation_use"):
        assert answers[table]["sqlstate"] is None and answers[table]["rows"] >= 0, table
    for table in foreign:
        assert answers[table] == {"rows": None, "sqlstate": DENIED}, table


# --- lifetimes ----------------------------------------------------------------------------------


async def role_exists(stack: PostgresStack, username: str) -> bool:
    return bool(
        await owner_value(stack, "SELECT count(*) FROM pg_roles WHERE rolname = $1", username)
    )


async def eventually(check: Callable[[], Any], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {within}s")
        await asyncio.sleep(0.1)


async def test_logins_are_reissued_before_they_expire_and_superseded_users_are_dropped(
    postgres_stack: PostgresStack, pdp: PDP, make_settings: Callable[..., Settings]
) -> None:
    ttl = 6  # re-issue at 2/3 of a login's life (4 s), unusable from 4.8 s, gone at 6 s
    settings = make_settings(
        pdp,
        vault=postgres_stack.vault,
        database_url=postgres_stack.url,
        vault_tool_token_ttl_seconds=ttl,
    )
    async with open_identities(settings) as identities:
        login = DatabaseCredentials(identities, "tickets", mount="database", role="mcp-tickets")
        store = Store(postgres_stack.url, login=login)
        await store.start(tables=[])
        # user -> (latest moment a transaction was already running with it, its usable_until)
        used: dict[str, tuple[float, float]] = {}
        try:
            deadline = time.monotonic() + 4 * ttl
            while time.monotonic() < deadline:
                async with store.transaction() as session:
                    # The login was chosen when the transaction opened, i.e. before this moment.
                    opened = time.monotonic()
                    await session.execute(text("SELECT 1 FROM ticket"))
                held = login.held
                assert held is not None
                used[held.username] = (opened, held.lease.usable_until)
                await asyncio.sleep(0.1)
            generations = login.held.lease.generation if login.held else 0
        finally:
            await store.close()
        assert len(used) >= 4 and generations >= 4  # one per 2/3 of the token's life
        late = {user: times for user, times in used.items() if times[0] >= times[1]}
        assert late == {}  # no login was chosen past its usable_until
        current = login.held.username if login.held else ""
        # Each superseded user dies with the token that obtained it (Vault drops it).
        for user in used:
            if user != current:
                await eventually(
                    lambda user=user: _gone(postgres_stack, user),
                    within=2 * ttl,
                    what=f"superseded user {user} dropped",
                )


async def _gone(stack: PostgresStack, username: str) -> bool:
    return not await role_exists(stack, username)


async def test_the_logins_stop_working_when_the_server_shuts_down(
    postgres_stack: PostgresStack, pdp: PDP, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(pdp, vault=postgres_stack.vault, database_url=postgres_stack.url)
    runtime = build_runtime(settings)
    await runtime.start()
    logins = [s.login.held for _, s in runtime.stores.distinct()]
    assert all(logins) and len(logins) == 2
    conns = [await connect(postgres_stack, login) for login in logins if login]
    await runtime.close()
    for login in logins:
        assert login is not None
        await eventually(
            lambda login=login: _gone(postgres_stack, login.username),
            within=10,
            what=f"user {login.username} dropped at shutdown",
        )
        with pytest.raises(asyncpg.InvalidPasswordError):
            await connect(postgres_stack, login)
    for conn in conns:  # a session left open by a login is useless once it is revoked
        assert await outcome_of(conn, "SELECT count(*) FROM ticket") == DENIED
        assert await outcome_of(conn, "SELECT count(*) FROM account") == DENIED
        await conn.close()


async def test_a_sealed_vault_fails_store_calls_closed_with_nothing_changed_then_recovers(
    postgres_stack: PostgresStack,
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    ttl = 3
    settings = make_settings(
        pdp,
        vault=postgres_stack.vault,
        database_url=postgres_stack.url,
        vault_tool_token_ttl_seconds=ttl,
    )
    server = start_server(settings, token)
    vault = postgres_stack.vault
    try:
        async with server.client("alice") as alice:
            assert (await alice.call_tool("list_tickets", {})).structured_content["count"] > 0
        before = await owner_value(
            postgres_stack,
            "SELECT (SELECT count(*) FROM ticket) || '/' || (SELECT count(*) FROM outbox)",
        )
        hvac.Client(url=vault.address, token=vault.root_token, timeout=5).sys.seal()

        async def store_refuses() -> bool:
            async with server.client("alice") as alice:
                listed = await alice.call_tool("list_tickets", {}, raise_on_error=False)
            return bool(listed.is_error)

        # The login in hand stays usable until its usable_until; after that, nothing.
        await eventually(store_refuses, within=4 * ttl, what="store calls refused while sealed")
        async with server.client("alice") as alice:
            listed = await alice.call_tool("list_tickets", {}, raise_on_error=False)
            created = await alice.call_tool(
                "create_ticket", {"title": "While sealed"}, raise_on_error=False
            )
        assert listed.content[0].text == (  # type: ignore[union-attr]
            "The data store is unavailable: nothing was changed; try again shortly."
        )
        assert created.is_error
        after = await owner_value(
            postgres_stack,
            "SELECT (SELECT count(*) FROM ticket) || '/' || (SELECT count(*) FROM outbox)",
        )
        assert after == before
    finally:
        hvac.Client(url=vault.address, timeout=5).sys.submit_unseal_key(vault.unseal_key)

    async def store_serves() -> bool:
        async with server.client("alice") as alice:
            listed = await alice.call_tool("list_tickets", {}, raise_on_error=False)
        return not listed.is_error

    try:
        await eventually(store_serves, within=10, what="store calls served after unseal")
        async with server.client("alice") as alice:
            created = await alice.call_tool("create_ticket", {"title": "After unseal"})
        assert created.structured_content["created_by"] == "alice"
    finally:
        server.stop()
