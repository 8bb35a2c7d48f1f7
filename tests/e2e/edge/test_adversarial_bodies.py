"""Adversarial bodies against the running server, generated: each is refused (or answered) at
once while an authenticated caller is served at the same time.

The deadline is a hang detector, not a speed claim: a super-linear step in the edge turned one
such body into minutes of held event loop.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import adversarial_bodies
from tests.support import RunningServer

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
DEADLINE = 2.0
INITIALIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
    b'"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}'
)
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def clients() -> Any:
    with httpx.Client(timeout=10) as hostile, httpx.Client(timeout=10) as served:
        yield hostile, served


def bodies(limit: int) -> st.SearchStrategy[bytes]:
    """Within the size limit, and sometimes just beyond it."""
    return st.one_of(
        adversarial_bodies(limit),
        adversarial_bodies(limit).map(lambda b: b + b" " * (limit + 1 - len(b))),
    )


def send_while_another_is_served(
    server: RunningServer, clients: Any, body: bytes, authorization: dict[str, str]
) -> tuple[int, float]:
    hostile, served = clients
    bearer = {"Authorization": f"Bearer {server.token('alice')}"}

    def attack() -> tuple[int, float]:
        started = time.monotonic()
        status = hostile.post(
            server.url, content=body, headers={**HEADERS, **authorization}
        ).status_code
        return status, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=1) as pool:
        attacked = pool.submit(attack)
        neighbour = served.post(server.url, content=INITIALIZE, headers={**HEADERS, **bearer})
        status, elapsed = attacked.result(timeout=15)
    assert neighbour.status_code == 200
    return status, elapsed


@given(body=st.data())
@EXAMPLES
def test_unauthenticated_hostile_bodies_get_401_or_413_at_once(
    server: RunningServer, clients: Any, body: st.DataObject
) -> None:
    limit = server.settings.max_body_bytes
    status, elapsed = send_while_another_is_served(server, clients, body.draw(bodies(limit)), {})
    assert status in (401, 413)
    assert elapsed < DEADLINE


@given(body=st.data())
@EXAMPLES
def test_authenticated_hostile_bodies_are_answered_at_once_and_never_with_5xx(
    server: RunningServer, clients: Any, body: st.DataObject
) -> None:
    limit = server.settings.max_body_bytes
    drawn = body.draw(bodies(limit))
    status, elapsed = send_while_another_is_served(
        server, clients, drawn, {"Authorization": f"Bearer {server.token('bob')}"}
    )
    assert 400 <= status < 500 or status == 200, status
    if len(drawn) > limit:
        assert status == 413
    assert elapsed < DEADLINE
