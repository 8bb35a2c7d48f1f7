"""Two replicas of the server share the work: two real server processes
(``python -m server serve``), each with its own Vault credential, over one PostgreSQL, one PDP
and one OpenBao.

- a human confirmation asked by one replica is answered on the other, and the refund runs once,
  however often and wherever the answer is sent again;
- a replica killed (SIGKILL) in the middle of a stream of writes loses no write its client saw
  succeed, and the other replica keeps serving;
- the outbox holds each change once: one row per committed change, across replicas, conflicts
  and retries;
- what stays per replica: a handshake-era (legacy) session lives in the replica that opened it,
  and rate limits count per process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from mcp import MCPError
from sqlalchemy import String
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ops.dev_issuer import DevIssuer
from ops.devstack import PDP
from server.store.core import Store
from tests.conftest import PostgresStack, admin_client
from tests.e2e.replicas.cluster import Cluster, Replica, Router, rpc_method
from tools.tickets.notifications import SIGNING_KEY_PATH

PREFIX = "replica-stream"


@pytest.fixture(scope="module")
def cluster(
    postgres_stack: PostgresStack,
    pdp: PDP,
    issuer: DevIssuer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """Replicas "a" and "b", started together on a fresh database (both seed it at once)."""
    running = Cluster(postgres_stack, pdp, issuer, tmp_path_factory.mktemp("replicas"))
    try:
        running.start(["a", "b"])
        yield running
    finally:
        running.stop()


def answering(answer: dict[str, Any]) -> Callable[..., Any]:
    async def handler(message: str, response_type: Any, params: Any, context: Any) -> Any:
        return answer

    return handler


async def refunds(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    return await cluster.query(
        "SELECT id, account_id, amount_cents, created_by FROM refund WHERE reason = $1", reason
    )


async def test_both_replicas_seeded_the_demo_rows_once_between_them(cluster: Cluster) -> None:
    from tools.accounts.seed import ROWS

    accounts = await cluster.query("SELECT name FROM account ORDER BY id")
    names = [r["name"] for r in accounts]
    assert Counter(names)[ROWS[0][0]] == 1
    assert names[: len(ROWS)] == [row[0] for row in ROWS]


class SeedProbe(DeclarativeBase):
    pass


class SeedRow(SeedProbe):
    __tablename__ = "replica_seed_probe"

    id: Mapped[int] = mapped_column(primary_key=True)
    seeded_by: Mapped[str] = mapped_column(String(16))


async def test_two_stores_seeding_an_empty_table_at_once_add_the_rows_once(
    cluster: Cluster,
) -> None:
    """What each replica's startup does, made to overlap for sure: both stores find the table
    empty at the same moment and take their time making the rows. One adds them; the other,
    held by the advisory lock, then finds them there."""
    database = cluster.stack.postgres
    url = make_url(database.url(user=database.owner)).set(password=database.owner_password)
    owner = create_async_engine(url)
    async with owner.begin() as conn:
        await conn.run_sync(SeedProbe.metadata.create_all)
    await owner.dispose()
    stores = [Store(url.render_as_string(hide_password=False)) for _ in range(2)]
    for store in stores:
        await store.start(tables=[])
    table = SeedRow.__table__
    try:

        def rows(replica: str) -> Callable[[], Any]:
            async def make() -> list[SeedRow]:
                await asyncio.sleep(0.5)  # the other replica's check happens meanwhile
                return [SeedRow(seeded_by=replica) for _ in range(3)]

            return make

        seeded = await asyncio.gather(
            stores[0].seed_if_empty([table], rows("a")),
            stores[1].seed_if_empty([table], rows("b")),
        )
    finally:
        for store in stores:
            await store.close()
    stored = await cluster.query("SELECT seeded_by FROM replica_seed_probe")
    assert sorted(seeded) == [False, True]
    assert len(stored) == 3 and len({r["seeded_by"] for r in stored}) == 1


async def test_a_confirmation_asked_on_one_replica_is_answered_on_the_other_and_runs_once(
    cluster: Cluster, token: Callable[..., str]
) -> None:
    a, b = cluster.replicas["a"], cluster.replicas["b"]
    reason = "Asked on a, answered on b"
    await cluster.query("UPDATE account SET balance_cents = 1000000 WHERE id = 2")
    spent_before = len(await cluster.query("SELECT nonce FROM confirmation_use"))
    retries: list[tuple[dict[str, str], bytes]] = []

    def route(request: httpx2.Request) -> str:
        # The question on a; the answer (the retried call carrying it) on b.
        if b"inputResponses" in (request.content or b""):
            retries.append((dict(request.headers), request.content))
            return "b"
        return "a"

    router = Router(cluster.replicas, route)
    asked: list[str] = []

    async def human(message: str, response_type: Any, params: Any, context: Any) -> Any:
        asked.append(message)
        return {"confirm": True}

    async with router.client(a.url, token("carol"), elicitation_handler=human) as carol:
        result = await carol.call_tool(
            "issue_refund", {"account_id": 2, "amount": "600.00", "reason": reason}
        )

    calls = [(name, answered) for name, method, answered in router.served if method == "tools/call"]
    assert calls == [("a", False), ("b", True)]  # asked by a, answered on b
    assert len(asked) == 1 and "above your limit" in asked[0]
    assert result.structured_content["confirmed_by_human"] is True
    assert [r["amount_cents"] for r in await refunds(cluster, reason)] == [60_000]
    assert len(await cluster.query("SELECT nonce FROM confirmation_use")) == spent_before + 1

    # The exact answer again, on either replica: refused, nothing runs twice.
    headers, body = retries[0]
    headers.pop("content-length", None)
    async with httpx2.AsyncClient() as raw:
        for replica in (a, b):
            replay = await raw.post(replica.url, content=body, headers=headers)
            assert "already used" in replay.text, replica.name
    assert len(await refunds(cluster, reason)) == 1


async def test_one_answer_sent_to_both_replicas_at_once_runs_the_refund_once(
    cluster: Cluster, token: Callable[..., str]
) -> None:
    """A client (or an attacker who copied its answer) sends the same accepted answer to both
    replicas at the same moment: one refund, one spent nonce, the other told it was used."""
    a, b = cluster.replicas["a"], cluster.replicas["b"]
    reason = "One answer, two replicas"
    await cluster.query("UPDATE account SET balance_cents = 1000000 WHERE id = 3")
    answers: list[tuple[dict[str, str], dict[str, Any]]] = []

    def route(request: httpx2.Request) -> str:
        content = request.content or b""
        if b"inputResponses" in content:
            answers.append((dict(request.headers), json.loads(content)))
        return "a"

    router = Router(cluster.replicas, route)
    # Keep the sealed question: answer "no" first (that spends nothing), then send "yes".
    async with router.client(
        a.url, token("carol"), elicitation_handler=answering({"confirm": False})
    ) as carol:
        declined = await carol.call_tool(
            "issue_refund",
            {"account_id": 3, "amount": "700.00", "reason": reason},
            raise_on_error=False,
        )
    assert declined.is_error and len(answers) == 1
    headers, body = answers[0]
    headers.pop("content-length", None)
    body["params"]["inputResponses"]["confirm"] = {
        "action": "accept",
        "content": {"confirm": True},
    }

    async def answer_on(replica: Replica) -> str:
        async with httpx2.AsyncClient(timeout=30) as raw:
            return (await raw.post(replica.url, json=body, headers=headers)).text

    texts = await asyncio.gather(answer_on(a), answer_on(b))
    ran = [t for t in texts if '"confirmed_by_human":true' in t.replace(" ", "")]
    assert len(ran) == 1, texts
    # The nonce is the first write of either transaction: the second waits for it, then is told.
    assert "This confirmation was already used. Nothing was changed." in next(
        t for t in texts if t not in ran
    )
    assert [r["amount_cents"] for r in await refunds(cluster, reason)] == [70_000]


async def test_a_legacy_session_lives_in_the_replica_that_opened_it(
    cluster: Cluster, token: Callable[..., str]
) -> None:
    """Handshake-era (2025-11-25) clients hold a session, and a session is held in the memory of
    the replica that opened it: behind a load balancer they need session affinity. Sessionless
    (2026-07-28) clients do not (the tests above move between replicas call by call)."""

    def route(request: httpx2.Request) -> str:
        return "a" if rpc_method(request) == "initialize" else "b"

    router = Router(cluster.replicas, route)
    with pytest.raises(MCPError) as lost:
        async with router.client(cluster.replicas["a"].url, token("alice"), mode="legacy") as c:
            await c.list_tools()
    assert "Session not found" in str(lost.value)
    served = {(name, method) for name, method, _ in router.served}
    assert ("a", "initialize") in served and any(name == "b" for name, _ in served)


# --- a replica killed mid-stream; the outbox ------------------------------------------------------


@dataclass(frozen=True)
class Write:
    kind: str  # "create" or "update"
    ticket: int | None  # the ticket's id (None for a create whose answer never came)
    title: str
    replica: str
    after_kill: bool


@dataclass
class Writes:
    acked: list[Write] = field(default_factory=list)  # the client saw it succeed
    unknown: list[Write] = field(default_factory=list)  # the client saw an error: done or not
    errors: Counter[str] = field(default_factory=Counter)

    def count(self, *, replica: str | None = None, after_kill: bool | None = None) -> int:
        return sum(
            1
            for w in self.acked
            if (replica is None or w.replica == replica)
            and (after_kill is None or w.after_kill == after_kill)
        )


async def signing_keys(cluster: Cluster) -> dict[int, bytes]:
    kv = admin_client(cluster.stack.vault).secrets.kv.v2
    latest = kv.read_secret_metadata(SIGNING_KEY_PATH, mount_point="secret")["data"]
    return {
        version: kv.read_secret_version(
            path=SIGNING_KEY_PATH,
            version=version,
            mount_point="secret",
            raise_on_deleted_version=True,
        )["data"]["data"]["signing_key"].encode()
        for version in range(1, int(latest["current_version"]) + 1)
    }


async def check_outbox(cluster: Cluster, title_prefix: str) -> dict[str, int]:
    """Every ticket whose title starts with ``title_prefix``: exactly one ``ticket.created`` row,
    exactly one ``ticket.updated`` row per committed update (its version counts them), no other
    row, and every row signed with the tickets key from Vault. Returns the totals."""
    tickets = await cluster.query(
        "SELECT id, version FROM ticket WHERE title LIKE $1", title_prefix + "%"
    )
    ids = [t["id"] for t in tickets]
    rows = await cluster.query(
        "SELECT subject_id, topic, payload, key_version, signature FROM outbox "
        "WHERE subject_id = ANY($1::int[])",
        ids,
    )
    keys = await signing_keys(cluster)
    per_ticket: dict[int, Counter[str]] = {i: Counter() for i in ids}
    for row in rows:
        per_ticket[row["subject_id"]][row["topic"]] += 1
        expected = hmac.new(keys[row["key_version"]], row["payload"].encode(), hashlib.sha256)
        assert hmac.compare_digest(row["signature"], expected.hexdigest()), row["subject_id"]
    for ticket in tickets:
        topics = per_ticket[ticket["id"]]
        assert topics["ticket.created"] == 1, (ticket, topics)
        assert topics["ticket.updated"] == ticket["version"] - 1, (ticket, topics)
        assert sum(topics.values()) == ticket["version"], (ticket, topics)
    return {"tickets": len(tickets), "outbox rows": len(rows)}


async def stream(
    token: str,
    first: Replica,
    fallback: Replica,
    writes: Writes,
    killed: asyncio.Event,
    stop: asyncio.Event,
    writer: int,
) -> None:
    """Create tickets and update them (every third write), on ``first`` until a call fails,
    then on ``fallback``: a client behind a load balancer that takes a dead replica out."""
    replica, mine, seq = first, list[int](), 0
    client = replica.client(token)
    await client.__aenter__()
    try:
        while not stop.is_set():
            seq += 1
            title = f"{PREFIX} {writer}-{seq}"
            update = bool(mine) and seq % 3 == 0
            kind, ticket = ("update", mine[-1]) if update else ("create", None)
            after_kill = killed.is_set()
            try:
                if update:
                    args: dict[str, Any] = {"ticket_id": ticket, "title": title}
                    answer = await client.call_tool("update_ticket", args)
                else:
                    answer = await client.call_tool("create_ticket", {"title": title})
                    ticket = answer.structured_content["id"]
                    mine.append(ticket)
                writes.acked.append(Write(kind, ticket, title, replica.name, after_kill))
            except Exception as error:
                writes.unknown.append(Write(kind, ticket, title, replica.name, after_kill))
                writes.errors[type(error).__name__] += 1
                if replica is fallback:  # the replica that stays must not fail a single write
                    raise
                with suppress(Exception):
                    await client.__aexit__(None, None, None)
                replica = fallback
                client = replica.client(token)
                await client.__aenter__()
    finally:
        with suppress(Exception):
            await client.__aexit__(None, None, None)


async def test_a_replica_killed_mid_stream_loses_no_acknowledged_write_and_the_other_serves_on(
    cluster: Cluster, token: Callable[..., str]
) -> None:
    survivor = cluster.replicas["b"]
    (victim,) = cluster.start(["victim"])
    writes, killed, stop = Writes(), asyncio.Event(), asyncio.Event()
    targets = [victim, survivor, victim, survivor]
    tasks = [
        asyncio.create_task(stream(token("alice"), target, survivor, writes, killed, stop, i))
        for i, target in enumerate(targets)
    ]
    deadline = time.monotonic() + 180
    try:
        while writes.count(replica="victim") < 15:  # a stream is under way on both replicas
            assert time.monotonic() < deadline and not any(t.done() for t in tasks)
            await asyncio.sleep(0.01)
        victim.kill()
        killed.set()
        while writes.count(replica="b", after_kill=True) < 40:
            assert time.monotonic() < deadline and not any(t.done() for t in tasks)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    # The survivor kept serving: ready, and every write sent to it succeeded.
    assert survivor.ready()
    assert not [w for w in writes.unknown if w.replica == "b"]
    assert writes.unknown and all(w.replica == "victim" for w in writes.unknown)

    # Every write the client saw succeed is in the database.
    stored = {
        r["id"]: r
        for r in await cluster.query(
            "SELECT id, title, version FROM ticket WHERE title LIKE $1", PREFIX + " %"
        )
    }
    assert {w.ticket for w in writes.acked} <= set(stored)
    updates = Counter(w.ticket for w in writes.acked if w.kind == "update")
    lost = Counter(w.ticket for w in writes.unknown if w.kind == "update")
    for ticket, row in stored.items():
        # Each acknowledged update is in its version; an unanswered one may or may not be.
        assert updates[ticket] <= row["version"] - 1 <= updates[ticket] + lost[ticket], row
        written = {w.title for w in [*writes.acked, *writes.unknown] if w.ticket == ticket}
        assert row["title"] in written or ticket not in {w.ticket for w in writes.acked}, row
    # A create whose answer never came happened at most once (or not at all).
    titles = Counter(r["title"] for r in stored.values())
    assert all(titles[w.title] <= 1 for w in writes.unknown if w.kind == "create")
    totals = await check_outbox(cluster, PREFIX + " ")
    print(  # the numbers of this run, for the record
        f"\nkill: acked before={writes.count(after_kill=False)} "
        f"(victim {writes.count(replica='victim')}), acked after={writes.count(after_kill=True)}, "
        f"unknown={len(writes.unknown)} ({dict(writes.errors)}), "
        f"unknown creates committed="
        f"{sum(titles[w.title] for w in writes.unknown if w.kind == 'create')}, {totals}"
    )


async def test_each_change_has_one_outbox_row_across_replicas_conflicts_and_retries(
    cluster: Cluster, token: Callable[..., str]
) -> None:
    """Both replicas update the same tickets at the same moments; the loser of each race is
    told the record changed (nothing saved) and retries. One outbox row per committed change."""
    a, b = cluster.replicas["a"], cluster.replicas["b"]
    prefix = "replica-outbox"
    async with a.client(token("alice")) as alice_a, b.client(token("alice")) as alice_b:
        ids = [
            (
                await alice_a.call_tool("create_ticket", {"title": f"{prefix} {k}"})
            ).structured_content["id"]
            for k in range(3)
        ]
        acked: Counter[int] = Counter()
        conflicts = 0

        async def update(client: Any, ticket: int, title: str) -> None:
            nonlocal conflicts
            while True:
                answer = await client.call_tool(
                    "update_ticket", {"ticket_id": ticket, "title": title}, raise_on_error=False
                )
                if not answer.is_error:
                    acked[ticket] += 1
                    return
                assert "changed while this request was being decided" in answer.content[0].text
                conflicts += 1

        rounds = 0
        while rounds < 15 or (conflicts < 3 and rounds < 80):
            ticket = ids[rounds % len(ids)]
            await asyncio.gather(
                update(alice_a, ticket, f"{prefix} {ticket} a{rounds}"),
                update(alice_b, ticket, f"{prefix} {ticket} b{rounds}"),
            )
            rounds += 1
    assert conflicts >= 3  # the races happened, and each loser retried
    versions = {
        r["id"]: r["version"]
        for r in await cluster.query(
            "SELECT id, version FROM ticket WHERE id = ANY($1::int[])", ids
        )
    }
    assert {t: versions[t] - 1 for t in ids} == {t: acked[t] for t in ids}
    totals = await check_outbox(cluster, prefix)
    assert totals["outbox rows"] == len(ids) + sum(acked.values())
    print(  # the numbers of this run, for the record
        f"\noutbox: rounds={rounds} updates={sum(acked.values())} conflicts retried={conflicts} "
        f"{totals}"
    )


async def test_rate_limits_count_per_replica(cluster: Cluster, token: Callable[..., str]) -> None:
    """The buckets live in each process: a principal throttled by one replica is still served by
    another with the same limit (with N replicas behind a balancer, up to N times the limit).
    A shared limit belongs in front of the replicas (docs/replicas.md)."""
    limits = {"MCP_RATE_LIMIT_PER_SECOND": "0.2", "MCP_RATE_LIMIT_BURST": "3"}
    first, second = cluster.start(["limited-1", "limited-2"], env=limits)
    headers = {"Authorization": f"Bearer {token('alice')}", "Content-Type": "application/json"}

    async def statuses(replica: Replica, n: int) -> list[int]:
        async with httpx2.AsyncClient(timeout=10) as raw:
            return [
                (await raw.post(replica.url, content=b"{}", headers=headers)).status_code
                for _ in range(n)
            ]

    on_first = await statuses(first, 6)
    on_second = await statuses(second, 3)
    assert on_first.count(429) >= 2 and 429 not in on_first[:3]
    assert 429 not in on_second
