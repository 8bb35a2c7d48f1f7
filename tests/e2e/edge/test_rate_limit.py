"""Per-principal rate limit: one principal is throttled, the others are unaffected."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mcp import MCPError

from ops.devstack import PDP
from server.edge.ratelimit import RATE_LIMITED
from server.settings import Settings
from tests.support import RunningServer, entry_principals, pdp_decisions, start_server


@pytest.fixture(scope="module")
def throttled(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[RunningServer]:
    running = start_server(make_settings(pdp, rate_limit_per_second=0.5, rate_limit_burst=5), token)
    yield running
    running.stop()


def created_by(server: RunningServer, who: str) -> int:
    with sqlite3.connect(server.db_path) as conn:
        return int(
            conn.execute("SELECT COUNT(*) FROM ticket WHERE created_by = ?", (who,)).fetchone()[0]
        )


async def test_a_flooding_principal_is_throttled_and_the_others_are_not(
    throttled: RunningServer, pdp: PDP
) -> None:
    succeeded = 0
    refusals: list[Any] = []
    async with throttled.client("mallory") as flooder, throttled.client("alice") as neighbour:
        async with pdp_decisions(throttled, pdp.audit_log) as caused:
            for _ in range(12):
                try:
                    await flooder.call_tool("create_ticket", {"title": "spam spam spam"})
                    succeeded += 1
                except MCPError as exc:
                    refusals.append(exc.error)
        refused = len(refusals)
        assert not (await neighbour.call_tool("list_tickets", {})).is_error
    assert refused >= 6
    assert all(e.code == RATE_LIMITED and e.data["retry_after_seconds"] > 0 for e in refusals)
    assert created_by(throttled, "mallory") == succeeded
    # Refused requests never reached the PDP: the client's one tools/list, then the tool gate
    # and the record decision of each admitted call.
    mallory = [e for e in caused if "mallory" in entry_principals(e)]
    assert len(mallory) <= 1 + 2 * succeeded
