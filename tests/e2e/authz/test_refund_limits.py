"""Refund limits apply to what one principal refunds on one account in a UTC day, so splitting a
refund does not get around the human who confirms above the limit; and two refunds decided at
the same time cannot both slip under it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from cerbos.svc.v1 import svc_pb2_grpc

from ops.dev_issuer import demo_principals
from ops.devstack import PDP
from server.settings import Settings
from server.store.core import utcnow
from tests.support import GrpcServicerThread, RunningServer, insert_account, start_server

CAROL_LIMIT = Decimal(demo_principals()["carol"]["refund_limit"])
# Above this, admins confirm too, and analysts may not refund at all (policies/account.yaml).
LARGE_REFUND = Decimal(5000)


def refunds(server: RunningServer, account: int) -> list[tuple[str, int]]:
    with sqlite3.connect(server.db_path) as conn:
        return list(
            conn.execute(
                "SELECT created_by, amount_cents FROM refund WHERE account_id = ? ORDER BY id",
                (account,),
            )
        )


class Human:
    """Answers every confirmation with ``answer`` and keeps the questions."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.asked: list[str] = []

    async def __call__(self, message: str, response_type: Any, params: Any, context: Any) -> Any:
        self.asked.append(message)
        return self.answer


async def refund(
    server: RunningServer, who: str, account: int, amount: Decimal, human: Human
) -> Any:
    async with server.client(who, elicitation_handler=human) as client:
        return await client.call_tool(
            "issue_refund",
            {"account_id": account, "amount": str(amount), "reason": "Split test"},
            raise_on_error=False,
        )


def half_the_limit_and_more() -> Decimal:
    """An amount within carol's limit whose double is above it."""
    return (CAROL_LIMIT * Decimal("0.6")).quantize(Decimal("0.01"))


async def test_two_refunds_within_the_limit_each_ask_a_human_for_the_second(
    server: RunningServer,
) -> None:
    account = insert_account(server.db_path, balance_cents=1_000_000)
    amount = half_the_limit_and_more()  # 300.00 for carol's 500
    human = Human({"confirm": False})
    first = await refund(server, "carol", account, amount, human)
    assert not first.is_error and first.structured_content["confirmed_by_human"] is False
    assert human.asked == []
    second = await refund(server, "carol", account, amount, human)
    assert len(human.asked) == 1 and f"above your limit of {CAROL_LIMIT}" in human.asked[0]
    assert second.is_error and "Not confirmed" in second.content[0].text
    assert refunds(server, account) == [("carol", int(amount * 100))]


async def test_the_second_refund_runs_once_a_human_confirms_it(server: RunningServer) -> None:
    account = insert_account(server.db_path, balance_cents=1_000_000)
    amount = half_the_limit_and_more()
    human = Human({"confirm": True})
    await refund(server, "carol", account, amount, human)
    second = await refund(server, "carol", account, amount, human)
    assert len(human.asked) == 1
    assert second.structured_content["confirmed_by_human"] is True
    assert len(refunds(server, account)) == 2


async def test_only_the_same_principals_refunds_on_the_same_account_count(
    server: RunningServer,
) -> None:
    """dave's refunds do not use up carol's limit, carol's do not count toward dave's large-refund
    line, and carol's refunds on another account do not count on this one."""
    account, other = (insert_account(server.db_path, balance_cents=2_000_000) for _ in range(2))
    human = Human({"confirm": False})
    near_line = LARGE_REFUND - CAROL_LIMIT + Decimal(100)  # 4,600: with carol's, above the line
    assert not (await refund(server, "carol", other, CAROL_LIMIT, human)).is_error
    assert not (await refund(server, "dave", account, near_line, human)).is_error
    assert not (await refund(server, "carol", account, CAROL_LIMIT, human)).is_error
    assert human.asked == []
    # dave's own refunds do add up: past the large-refund line for the day he confirms too.
    more = await refund(server, "dave", account, LARGE_REFUND - near_line + 1, human)
    assert len(human.asked) == 1 and "large refund" in human.asked[0]
    assert more.is_error
    assert sorted(refunds(server, account)) == sorted(
        [("dave", int(near_line * 100)), ("carol", int(CAROL_LIMIT * 100))]
    )


@pytest.fixture
def tomorrow(server: RunningServer) -> Iterator[Callable[[], None]]:
    """Moves the server's store clock a day ahead on request; put back after the test."""
    store = server.runtime.stores.of("accounts")  # the store the refund tools get
    clock = store.clock

    def move() -> None:
        store.clock = lambda: clock() + timedelta(days=1)

    yield move
    store.clock = clock


async def test_another_day_starts_a_fresh_sum(
    server: RunningServer, tomorrow: Callable[[], None]
) -> None:
    account = insert_account(server.db_path, balance_cents=1_000_000)
    amount = half_the_limit_and_more()
    human = Human({"confirm": False})
    assert not (await refund(server, "carol", account, amount, human)).is_error
    tomorrow()
    assert not (await refund(server, "carol", account, amount, human)).is_error
    assert human.asked == []
    # ... and that day's sum counts from then on.
    assert (await refund(server, "carol", account, amount, human)).is_error
    assert len(human.asked) == 1


def stored(moment: datetime) -> str:
    """A time as the store writes it to SQLite."""
    return moment.isoformat(sep=" ", timespec="microseconds")


async def test_a_refund_just_before_midnight_utc_is_yesterdays(server: RunningServer) -> None:
    """The day is the UTC day of the store's clock: a refund stamped 23:59:59 the day before does
    not count, one stamped 00:00:00 today does."""
    account = insert_account(server.db_path, balance_cents=1_000_000)
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    amount = half_the_limit_and_more()
    with sqlite3.connect(server.db_path) as conn:
        conn.execute(
            "INSERT INTO refund (account_id, amount_cents, reason, created_by, created_at)"
            " VALUES (?, ?, 'yesterday', 'carol', ?)",
            (account, int(amount * 100), stored(today - timedelta(microseconds=1))),
        )
    human = Human({"confirm": False})
    assert not (await refund(server, "carol", account, amount, human)).is_error
    assert human.asked == []
    with sqlite3.connect(server.db_path) as conn:
        conn.execute(
            "UPDATE refund SET created_at = ? WHERE reason = 'yesterday'", (stored(today),)
        )
    assert (await refund(server, "carol", account, Decimal("0.01"), human)).is_error
    assert len(human.asked) == 1


# --- two refunds decided at the same time ----------------------------------------------------


class SlowRefundDecisions(svc_pb2_grpc.CerbosServiceServicer):
    """A stand-in in front of the real PDP for a timing the real one gives only by chance: it
    forwards every request and answers refund decisions ``delay`` seconds late, so that two
    refunds are both decided before either is written."""

    def __init__(self, target: str, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.stub: Any = None

    def _stub(self) -> Any:
        if self.stub is None:
            self.stub = svc_pb2_grpc.CerbosServiceStub(grpc.aio.insecure_channel(self.target))
        return self.stub

    async def CheckResources(self, request: Any, context: Any) -> Any:
        if any("refund" in entry.actions for entry in request.resources):
            await asyncio.sleep(self.delay)
        return await self._stub().CheckResources(request, metadata=forwarded(context))

    async def PlanResources(self, request: Any, context: Any) -> Any:
        return await self._stub().PlanResources(request, metadata=forwarded(context))


def forwarded(context: Any) -> tuple[tuple[str, str], ...]:
    keep = ("x-request-id", "traceparent", "tracestate")
    return tuple((k, v) for k, v in context.invocation_metadata() if k in keep)


@pytest.fixture
def slow_decisions_server(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[RunningServer]:
    with GrpcServicerThread(SlowRefundDecisions(pdp.grpc_address, delay=0.4)) as proxy:
        proxied = PDP(
            process=None,  # type: ignore[arg-type]
            grpc_address=f"127.0.0.1:{proxy.port}",
            http_url="",
            audit_log=pdp.audit_log,
        )
        running = start_server(make_settings(proxied, pdp_timeout_seconds=3.0), token)
        yield running
        running.stop()


async def test_two_concurrent_refunds_cannot_both_slip_under_the_limit(
    slow_decisions_server: RunningServer,
) -> None:
    server = slow_decisions_server
    amount = half_the_limit_and_more()
    accounts = [insert_account(server.db_path, balance_cents=1_000_000) for _ in range(3)]
    human = Human({"confirm": False})
    for account in accounts:
        results = await asyncio.gather(
            refund(server, "carol", account, amount, human),
            refund(server, "carol", account, amount, human),
        )
        # Both were decided on a day's sum of 0; only the first write stands.
        done = [r for r in results if not r.is_error]
        refused = [r.content[0].text for r in results if r.is_error]
        assert len(done) == 1 and done[0].structured_content["confirmed_by_human"] is False
        assert len(refused) == 1 and "changed while this request was being decided" in refused[0]
        assert refunds(server, account) == [("carol", int(amount * 100))]
    # The refused one, tried again, sees the first in the day's sum and asks the human.
    again = await refund(server, "carol", accounts[0], amount, human)
    assert again.is_error and len(human.asked) == 1
