"""The component-decision cache: an entry answers only the very question the PDP answered, for
at most its TTL, never past the token it was made for, and not at all once flushed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from server.authz.decision_cache import DecisionCache
from server.authz.decisions import ActionDecision, ResourceDecision, ResourceRef
from server.edge.principal import Principal

ALICE = Principal(id="alice", roles=("support_agent",), department="support", teams=("tier1",))
TOOL = ResourceRef(
    "mcp_tool",
    "get_ticket",
    {"name": "get_ticket", "tags": ["tickets"], "department": "support", "read_only": True},
)
CALL = ("call",)


def decision(ref: ResourceRef = TOOL, allowed: bool = True) -> ResourceDecision:
    return ResourceDecision(
        resource=ref, actions={"call": ActionDecision("call", allowed, "p")}, call_id="c1"
    )


def cached(cache: DecisionCache, principal: Principal = ALICE, ref: ResourceRef = TOOL) -> Any:
    key = cache.key(principal, ref, CALL)
    cache.put(key, decision(ref), request_id="r1", now=100.0, valid_until=None)
    return key


def test_a_stored_decision_answers_the_same_question_within_the_ttl() -> None:
    cache = DecisionCache(1.0)
    key = cached(cache)
    hit = cache.get(cache.key(ALICE, TOOL, CALL), 100.5)
    assert hit is not None and hit.decision.call_id == "c1" and hit.request_id == "r1"
    assert cache.get(key, 101.0) is None  # the TTL is over
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1


@pytest.mark.parametrize(
    "principal",
    [
        Principal(id="bob", roles=("support_agent",), department="support", teams=("tier1",)),
        Principal(id="alice", roles=("admin",), department="support", teams=("tier1",)),
        Principal(id="alice", roles=("support_agent",), department="it", teams=("tier1",)),
        Principal(id="alice", roles=("support_agent",), department="support", teams=("tier2",)),
        Principal(
            id="alice", roles=("support_agent",), department="support", teams=("tier1",), mfa=True
        ),
        Principal(
            id="alice",
            roles=("support_agent",),
            department="support",
            teams=("tier1",),
            refund_limit=5,
        ),
    ],
)
def test_any_other_principal_input_is_another_question(principal: Principal) -> None:
    cache = DecisionCache(1.0)
    cached(cache)
    assert cache.get(cache.key(principal, TOOL, CALL), 100.1) is None


@pytest.mark.parametrize(
    "ref",
    [
        ResourceRef("mcp_prompt", TOOL.id, TOOL.attributes),
        ResourceRef(TOOL.kind, "get_account", TOOL.attributes),
        ResourceRef(TOOL.kind, TOOL.id, {**TOOL.attributes, "department": "finance"}),
        ResourceRef(TOOL.kind, TOOL.id, {**TOOL.attributes, "tags": ["tickets", "released"]}),
        ResourceRef(TOOL.kind, TOOL.id, {**TOOL.attributes, "read_only": 1}),  # not True
        ResourceRef(TOOL.kind, TOOL.id, {**TOOL.attributes, "extra": None}),
    ],
)
def test_any_other_resource_input_is_another_question(ref: ResourceRef) -> None:
    cache = DecisionCache(1.0)
    cached(cache)
    assert cache.get(cache.key(ALICE, ref, CALL), 100.1) is None


def test_another_action_is_another_question() -> None:
    cache = DecisionCache(1.0)
    cached(cache)
    assert cache.get(cache.key(ALICE, TOOL, ("list",)), 100.1) is None


def test_attribute_order_does_not_matter() -> None:
    cache = DecisionCache(1.0)
    cached(cache)
    shuffled = ResourceRef(TOOL.kind, TOOL.id, dict(reversed(list(TOOL.attributes.items()))))
    assert cache.get(cache.key(ALICE, shuffled, CALL), 100.1) is not None


def test_no_entry_outlives_the_token_it_was_made_for() -> None:
    cache = DecisionCache(10.0)
    key = cache.key(ALICE, TOOL, CALL)
    now = time.monotonic()
    cache.put(key, decision(), request_id="r", now=now, valid_until=time.time() + 2)
    assert cache.get(key, now + 1.5) is not None
    assert cache.get(key, now + 2.5) is None  # the token has expired; the TTL has not
    cache.put(key, decision(), request_id="r", now=now, valid_until=time.time() - 1)
    assert len(cache) == 0  # already expired: not stored at all


def test_a_flush_forgets_everything() -> None:
    cache = DecisionCache(1.0)
    key = cached(cache)
    cache.flush()
    assert cache.get(key, 100.1) is None
    assert cache.stats()["flushes"] == 1


def test_the_cache_is_bounded() -> None:
    cache = DecisionCache(1.0, max_entries=3)
    for name in "abcde":
        ref = ResourceRef("mcp_tool", name, {})
        cache.put(
            cache.key(ALICE, ref, CALL), decision(ref), request_id="r", now=100.0, valid_until=None
        )
    assert len(cache) == 3
    assert cache.get(cache.key(ALICE, ResourceRef("mcp_tool", "a", {}), CALL), 100.1) is None
    assert cache.get(cache.key(ALICE, ResourceRef("mcp_tool", "e", {}), CALL), 100.1) is not None


def test_a_ttl_of_zero_turns_the_cache_off() -> None:
    assert not DecisionCache(0).enabled
    assert DecisionCache(0.5).enabled
