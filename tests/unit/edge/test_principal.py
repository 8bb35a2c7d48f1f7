"""Principals are parsed strictly from claims: wrong shapes are refused, never coerced."""

from __future__ import annotations

from typing import Any

import pytest

from server.edge.principal import InvalidClaims, principal_from_claims

GOOD = {
    "sub": "carol",
    "roles": ["finance_analyst"],
    "department": "finance",
    "teams": ["billing"],
    "refund_limit": 500,
    "mfa": False,
    "email": "ignored@example.com",
    "scope": "anything",
}


def test_claims_become_a_principal_and_unused_claims_are_ignored() -> None:
    principal = principal_from_claims(GOOD)
    assert principal.id == "carol" and principal.roles == ("finance_analyst",)
    assert principal.policy_attributes() == {
        "department": "finance",
        "teams": ["billing"],
        "mfa": False,
        "refund_limit": 500,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"sub": None},
        {"sub": ""},
        {"sub": 42},
        {"sub": "x" * 200},
        {"roles": []},
        {"roles": "admin"},
        {"roles": [1]},
        {"roles": ["Admin!"]},
        {"roles": None},
        {"department": None},
        {"department": ["it"]},
        {"teams": "tier1"},
        {"teams": [{"name": "tier1"}]},
        {"mfa": "true"},
        {"mfa": 1},
        {"refund_limit": "500"},
        {"refund_limit": -1},
        {"refund_limit": 1.5},
        {"refund_limit": True},
    ],
)
def test_malformed_claims_are_refused(change: dict[str, Any]) -> None:
    claims = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(InvalidClaims):
        principal_from_claims(claims)
