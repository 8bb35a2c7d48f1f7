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
    if capability.models:  # its own database login on PostgreSQL, nothing else of the engine
        expected[f"database/creds/mcp-{capability.vault.identity}"] = ("read",)
    assert grants == expected


@pytest.mark.parametrize("capability", CAPABILITIES, ids=[c.name for c in CAPABILITIES])
def test_each_database_role_grants_row_access_to_its_own_tables_only(
    capability: Capability,
) -> None:
    role = next(r for r in PLAN.database_roles if r.capability == capability.name)
    own = {m.__tablename__ for m in capability.models}
    others = {m.__tablename__ for c in CAPABILITIES if c is not capability for m in c.models}
    statements = " ".join(role.creation_statements("mcp"))
    assert set(role.tables) == own
    assert not [t for t in others if f'"{t}"' in statements]
    assert role.shared_tables == ("confirmation_use",)
    grants = [s for s in role.creation_statements("mcp") if s.startswith("GRANT")]
    assert grants == [
        'GRANT CONNECT ON DATABASE "mcp" TO "{{name}}"',
        "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "
        + ", ".join(f'"{t}"' for t in role.tables)
        + ' TO "{{name}}"',
        'GRANT SELECT, INSERT ON TABLE "confirmation_use" TO "{{name}}"',
        "GRANT USAGE ON SEQUENCE "
        + ", ".join(f'"{t}_id_seq"' for t in role.tables)
        + ' TO "{{name}}"',
    ]
    # No DDL, no membership, no ownership: the login can only use rows.
    assert not re.search(r"\b(ALL PRIVILEGES|CREATE ON|OWNER|IN ROLE|SUPERUSER)\b", statements)
    assert role.revocation_statements("mcp")[-1] == 'DROP ROLE IF EXISTS "{{name}}"'


def test_a_capability_with_tables_but_no_identity_is_refused() -> None:
    tickets = next(c for c in CAPABILITIES if c.name == "tickets")
    orphan = Capability(name="orphan", instructions="x", models=tickets.models)
    with pytest.raises(InvalidDeclaration, match="owns tables but declares no Vault identity"):
        plan([orphan])


def test_no_identity_policy_uses_a_wildcard() -> None:
    for name, hcl in PLAN.policies.items():
        assert not re.search(r'path "[^"]*[*+]"', hcl), name


def test_a_secret_outside_the_identity_prefix_is_refused_at_declaration() -> None:
    with pytest.raises(InvalidDeclaration, match="must lie under 'tools/reports/'"):
        VaultNeeds(
            identity="reports", secrets={"tools/tickets/notifications": {"k": random_secret}}
        )
