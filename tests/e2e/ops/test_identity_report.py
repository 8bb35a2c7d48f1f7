"""`make identities`: the table is read from Vault (not from this repository), shows what each
identity can reach, and shows that each is denied what the others hold."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import hvac
import pytest

from ops.devstack import OpenBao
from ops.identity_report import (
    parse_policy,
    read_database_roles,
    read_identities,
    render,
    render_database_roles,
)
from tests.conftest import PostgresStack
from tests.support import ROOT
from tools import CAPABILITIES


def test_the_report_lists_each_identity_with_exactly_its_own_reach(
    vault_admin: hvac.Client,
) -> None:
    reports = {r.identity: r for r in read_identities(vault_admin)}
    assert set(reports) == {"server", "settings", "tickets", "accounts"}
    reach = {
        name: {(g.path, g.effective) for g in report.grants} for name, report in reports.items()
    }
    assert reach["tickets"] == {
        ("secret/data/tools/tickets/notifications", ("read",)),
        ("database/creds/mcp-tickets", ("read",)),
    }
    assert reach["accounts"] == {
        ("transit/encrypt/accounts", ("update",)),
        ("transit/decrypt/accounts", ("update",)),
        ("database/creds/mcp-accounts", ("read",)),
    }
    assert reach["settings"] == {("secret/data/mcp/server", ("read",))}
    assert {p for p, _ in reach["server"]} == {
        "auth/token/create/mcp-settings",
        "auth/token/create/mcp-tickets",
        "auth/token/create/mcp-accounts",
        "auth/token/renew-self",
        "auth/token/revoke-self",
    }
    every_path = {p for r in reach.values() for p, _ in r}
    for name, report in reports.items():
        assert report.reachable_elsewhere == []
        assert report.denied_elsewhere == len(every_path) - len(reach[name])
        assert not report.default_policy


def test_the_report_reflects_vault_not_the_repository(
    fresh_openbao: Callable[..., OpenBao],
) -> None:
    vault = fresh_openbao()
    admin = hvac.Client(url=vault.address, token=vault.root_token, timeout=5)
    # Someone widened a policy in Vault by hand: the review must show it.
    admin.sys.create_or_update_policy(
        name="mcp-tickets",
        policy='path "secret/data/tools/tickets/*" { capabilities = ["read"] }\n'
        'path "transit/decrypt/accounts" { capabilities = ["update"] }\n',
    )
    tickets = next(r for r in read_identities(admin) if r.identity == "tickets")
    assert ("transit/decrypt/accounts", ("update",)) in {
        (g.path, g.effective) for g in tickets.grants
    }
    assert "transit/decrypt/accounts" in render([tickets])


def test_policy_text_the_report_cannot_read_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot read"):
        parse_policy('path "a" { capabilities = ["read"] }\nstrange "b" {}\n')


def test_make_identities_prints_the_table(bao_bin: Path) -> None:
    command = ["-m", "ops", "--env-file", "config/dev/dev.env", "identities", "--bao"]
    result = subprocess.run(
        [sys.executable, *command, str(bao_bin)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )
    lines = result.stdout.splitlines()
    assert lines[1].split()[:3] == ["IDENTITY", "OBTAINED", "THROUGH"]
    assert any(
        line.startswith("tickets ") and "secret/data/tools/tickets/notifications" in line
        for line in lines
    )
    assert "tickets: default policy no" in result.stdout
    assert "table ticket             DELETE,INSERT,SELECT,UPDATE" in result.stdout
    assert "mcp-tickets: logins live" in result.stdout
    assert "no privilege on the tables account, refund" in result.stdout


def owned_tables(capability: str) -> set[str]:
    return {m.__tablename__ for c in CAPABILITIES if c.name == capability for m in c.models}


def test_the_report_lists_each_database_role_with_its_live_grants(
    postgres_stack: PostgresStack,
) -> None:
    admin = hvac.Client(
        url=postgres_stack.vault.address, token=postgres_stack.vault.root_token, timeout=5
    )
    roles = {r.role: r for r in read_database_roles(admin, read_identities(admin))}
    assert set(roles) == {f"mcp-{c.identity}" for c in CAPABILITIES if c.models}
    for capability in (c for c in CAPABILITIES if c.models):
        role = roles[f"mcp-{capability.identity}"]
        assert role.read_by == (capability.identity,)  # no other identity may read its logins
        assert role.effective == role.declared  # PostgreSQL agrees with the creation statements
        tables = {o.removeprefix("table ") for o in role.declared if o.startswith("table ")}
        assert tables == owned_tables(capability.name) | {"confirmation_use"}
        others = set().union(*(owned_tables(c.name) for c in CAPABILITIES)) - tables
        assert set(role.denied_tables) == others
    assert "mcp-tickets" in render_database_roles(list(roles.values()))


def test_a_database_role_widened_in_vault_shows_in_the_report(
    postgres_stack: PostgresStack,
) -> None:
    admin = hvac.Client(
        url=postgres_stack.vault.address, token=postgres_stack.vault.root_token, timeout=5
    )
    path = "database/roles/mcp-tickets"
    original = admin.read(path)["data"]
    widened = [*original["creation_statements"], 'GRANT SELECT ON TABLE "account" TO "{{name}}"']
    admin.write_data(path, data={**original, "creation_statements": widened})
    try:
        tickets = next(
            r for r in read_database_roles(admin, read_identities(admin)) if r.role == "mcp-tickets"
        )
    finally:
        admin.write_data(path, data=original)
    assert tickets.effective is not None and tickets.effective["table account"] == ("SELECT",)
    assert "account" not in tickets.denied_tables
