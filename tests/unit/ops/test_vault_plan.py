"""The Vault plan rendered from the declarations: the server may mint exactly the declared
identities, and each identity reaches exactly what its capability declares."""

from __future__ import annotations

import re

import pytest

from ops.identity_report import parse_policy
from ops.vault_plan import SERVER_POLICY, plan
from server.capability import Capability, InvalidDeclaration, VaultNeeds, random_secret
from tools import CAPABILITIES

PLAN = plan(CAPABILITIES)


def test_the_server_mints_exactly_the_declared_identities() -> None:
    grants = parse_policy(PLAN.policies[SERVER_POLICY])
    minted = {g.path.removeprefix("auth/token/create/mcp-") for g in grants if "create" in g.path}
    declared = {c.identity for c in CAPABILITIES if c.identity}
    assert minted == {"settings", *declared}
    assert not [g for g in grants if "secret/" in g.path or "transit/" in g.path]


@pytest.mark.parametrize("capability", CAPABILITIES, ids=[c.name for c in CAPABILITIES])
def test_each_identity_reaches_exactly_its_declared_secrets_and_keys(
    capability: Capability,
) -> None:
    assert capability.vault is not None
    grants = {g.path: g.declared for g in parse_policy(PLAN.policies[f"mcp-{capability.name}"])}
    expected = {f"secret/data/{path}": ("read",) for path in capability.vault.secrets}
    for key in capability.vault.transit_keys:
        expected |= {f"transit/{op}/{key}": ("update",) for op in ("encrypt", "decrypt")}
    assert grants == expected


def test_no_identity_policy_uses_a_wildcard() -> None:
    for name, hcl in PLAN.policies.items():
        assert not re.search(r'path "[^"]*[*+]"', hcl), name


def test_a_secret_outside_the_identity_prefix_is_refused_at_declaration() -> None:
    with pytest.raises(InvalidDeclaration, match="must lie under 'tools/reports/'"):
        VaultNeeds(
            identity="reports", secrets={"tools/tickets/notifications": {"k": random_secret}}
        )
