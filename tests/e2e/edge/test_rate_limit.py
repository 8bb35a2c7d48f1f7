"""Rate limits at the edge, cheapest refusal first.

- Per client address, before authentication: a flood of requests that do not authenticate is
  refused without verifying a token; authenticated requests from the same address do not count.
- Per principal, right after authentication: a flooding principal costs one token verification
  (the signature once), no body scan and no MCP work; other principals are unaffected.

Every address in these tests is on the loopback network (127.0.0.0/8): a client picks its source
address, and forwarded headers name loopback addresses too.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastmcp import FastMCP
from fastmcp.server.middleware import Middleware
from mcp import MCPError

from ops.devstack import PDP
from server.edge import limits
from server.edge.authn import StrictJWTVerifier
from server.edge.ratelimit import RATE_LIMITED
from server.settings import Settings
from tests.support import (
    LEGACY_INITIALIZE,
    RunningServer,
    entry_principals,
    pdp_decisions,
    start_server,
)

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = LEGACY_INITIALIZE


class Counters:
    """What the edge did, counted where the work happens."""

    def __init__(self) -> None:
        self.verifications: list[str] = []  # every token looked at (cache hits included)
        self.signature_checks = 0  # the expensive part: key lookup and signature
        self.body_scans = 0
        self.mcp_messages: list[str] = []

    def count_verifier(self, mcp: FastMCP[Any]) -> None:
        verifier = mcp.auth.token_verifier  # type: ignore[union-attr]
        assert isinstance(verifier, StrictJWTVerifier)
        load, signed = verifier.load_access_token, verifier._signed_claims

        async def counted_load(token: str) -> Any:
            self.verifications.append(token)
            return await load(token)

        async def counted_signed(token: str) -> Any:
            self.signature_checks += 1
            return await signed(token)

        verifier.load_access_token = counted_load  # type: ignore[method-assign]
        verifier._signed_claims = counted_signed  # type: ignore[method-assign]

    def count_mcp(self, mcp: FastMCP[Any]) -> None:
        counters = self

        class CountMessages(Middleware):
            async def on_message(self, context: Any, call_next: Any) -> Any:
                counters.mcp_messages.append(context.method or "")
                return await call_next(context)

        # Added first, so it is outermost: it sees every message that reaches MCP at all.
        mcp.middleware.insert(0, CountMessages())


@pytest.fixture
def counters(monkeypatch: pytest.MonkeyPatch) -> Counters:
    counted = Counters()
    scan = limits.json_depth

    def counted_scan(body: bytes) -> int:
        counted.body_scans += 1
        return scan(body)

    monkeypatch.setattr(limits, "json_depth", counted_scan)
    return counted


def throttled_server(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
    counters: Counters | None = None,
    **overrides: Any,
) -> RunningServer:
    def prepare(mcp: FastMCP[Any]) -> None:
        if counters is not None:
            counters.count_verifier(mcp)
            counters.count_mcp(mcp)

    return start_server(make_settings(pdp, **overrides), token, prepare)


def from_address(address: str) -> httpx.Client:
    """A client whose connections leave from ``address`` (any 127.x.y.z reaches the server)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def post(
    client: httpx.Client,
    server: RunningServer,
    bearer: str | None,
    body: dict[str, Any] = INITIALIZE,
    **headers: str,
) -> httpx.Response:
    extra = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    return client.post(
        server.url, content=json.dumps(body), headers={**HEADERS, **extra, **headers}
    )


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["code"] == RATE_LIMITED and error["data"]["retry_after_seconds"] > 0


# --- per client address, before authentication -----------------------------------------------


@pytest.fixture(scope="module")
def address_limited(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[RunningServer]:
    running = throttled_server(
        pdp, make_settings, token, preauth_rate_limit_per_second=0.2, preauth_rate_limit_burst=5
    )
    yield running
    running.stop()


def test_a_flooding_address_is_refused_before_any_token_verification(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str], counters: Counters
) -> None:
    server = throttled_server(
        pdp,
        make_settings,
        token,
        counters,
        preauth_rate_limit_per_second=0.2,
        preauth_rate_limit_burst=5,
    )
    try:
        with from_address("127.0.0.2") as flooder:
            statuses = [post(flooder, server, f"forged-{i}").status_code for i in range(30)]
            refused = [post(flooder, server, "forged") for _ in range(3)]
        with from_address("127.0.0.3") as neighbour:
            served = post(neighbour, server, server.token("alice"))
    finally:
        server.stop()
    # The burst (5) plus at most a token or two refilled while flooding were looked at.
    assert 5 <= statuses.count(401) <= 7 and statuses.count(429) == 30 - statuses.count(401)
    for response in refused:
        assert_throttled(response)
    flood_verifications = [t for t in counters.verifications if t.startswith("forged")]
    assert len(flood_verifications) == statuses.count(401)
    assert served.status_code == 200  # another address is not affected
    # No body of the flood was scanned and none reached MCP: only the neighbour's request.
    assert counters.body_scans == 1 and counters.mcp_messages == ["initialize"]


def test_authenticated_requests_do_not_use_up_their_addresss_limit(
    address_limited: RunningServer,
) -> None:
    """Behind a NAT or a proxy many callers share an address: the limit counts only requests
    that do not authenticate, so a busy authenticated client is never refused by it."""
    with from_address("127.0.0.4") as client:
        bearer = address_limited.token("bob")
        assert [post(client, address_limited, bearer).status_code for _ in range(15)] == [200] * 15
        # ...while its failures still count.
        assert {post(client, address_limited, "forged").status_code for _ in range(5)} == {401}
        assert_throttled(post(client, address_limited, "forged"))


def test_forwarded_headers_are_ignored_unless_the_peer_is_a_trusted_proxy(
    address_limited: RunningServer,
) -> None:
    """Without MCP_TRUSTED_PROXIES a flooder cannot escape its bucket by inventing addresses."""
    with from_address("127.0.0.5") as flooder:
        statuses = {
            post(
                flooder, address_limited, "forged", **{"X-Forwarded-For": f"127.1.0.{i}"}
            ).status_code
            for i in range(12)
        }
    assert 429 in statuses


def test_behind_a_trusted_proxy_the_forwarded_client_is_the_key(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> None:
    server = throttled_server(
        pdp,
        make_settings,
        token,
        preauth_rate_limit_per_second=0.2,
        preauth_rate_limit_burst=3,
        trusted_proxies=["127.0.0.6"],
    )

    def forwarded(proxy: httpx.Client, client: str, bearer: str = "forged") -> int:
        # A proxy appends the address it saw; whatever the client claimed stays on the left.
        chain = f"127.9.9.9, {client}"
        return post(proxy, server, bearer, **{"X-Forwarded-For": chain}).status_code

    try:
        with from_address("127.0.0.6") as proxy:
            flood = [forwarded(proxy, "127.2.0.1") for _ in range(8)]
            other_client = forwarded(proxy, "127.2.0.2")
            served = forwarded(proxy, "127.2.0.1", server.token("alice"))
        with from_address("127.0.0.7") as untrusted:
            spoofed = [
                post(untrusted, server, "forged", **{"X-Forwarded-For": f"127.3.0.{i}"})
                for i in range(8)
            ]
    finally:
        server.stop()
    assert flood[:3] == [401] * 3 and set(flood[3:]) == {429}
    assert other_client == 401  # its own bucket: looked at, not refused
    assert served == 429  # the limit is checked before the token: the address is throttled
    assert 429 in {r.status_code for r in spoofed}


# --- per principal, right after authentication ------------------------------------------------


def created_by(server: RunningServer, who: str) -> int:
    with sqlite3.connect(server.db_path) as conn:
        return int(
            conn.execute("SELECT COUNT(*) FROM ticket WHERE created_by = ?", (who,)).fetchone()[0]
        )


async def test_a_flooding_principal_is_throttled_and_the_others_are_not(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> None:
    """What an MCP SDK client sees: the JSON-RPC error of its request (code RATE_LIMITED with
    the seconds to wait), carried by an HTTP 429."""
    throttled = throttled_server(
        pdp, make_settings, token, rate_limit_per_second=0.5, rate_limit_burst=5
    )
    succeeded = 0
    refusals: list[Any] = []
    try:
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
    finally:
        throttled.stop()
    assert refused >= 6
    assert all(e.code == RATE_LIMITED and e.data["retry_after_seconds"] > 0 for e in refusals)
    assert created_by(throttled, "mallory") == succeeded
    # Refused requests never reached the PDP: the client's one tools/list, then the tool gate
    # and the record decision of each admitted call.
    mallory = [e for e in caused if "mallory" in entry_principals(e)]
    assert len(mallory) <= 1 + 2 * succeeded


def test_a_throttled_principal_costs_no_body_scan_and_no_mcp_work(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str], counters: Counters
) -> None:
    server = throttled_server(
        pdp, make_settings, token, counters, rate_limit_per_second=0.2, rate_limit_burst=3
    )
    padding = "x" * (server.settings.max_body_bytes // 2)
    big = {**INITIALIZE, "params": {**INITIALIZE["params"], "_meta": {"padding": padding}}}
    try:
        with httpx.Client(timeout=10) as client:
            bearer = server.token("mallory")
            statuses = [post(client, server, bearer, big).status_code for _ in range(20)]
            throttled = post(client, server, bearer, big)
            served = post(client, server, server.token("alice"))
    finally:
        server.stop()
    admitted = statuses.count(200)
    assert 3 <= admitted <= 5 and statuses.count(429) == 20 - admitted
    assert_throttled(throttled)
    assert served.status_code == 200
    # One signature check for mallory's token (then the cache) and one for alice's; a body scan
    # and an MCP message only for what was admitted.
    assert counters.signature_checks == 2
    assert counters.body_scans == admitted + 1
    assert counters.mcp_messages == ["initialize"] * (admitted + 1)
