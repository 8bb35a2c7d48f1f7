"""The production guard's rules: each development shortcut is a violation, a clean production
configuration passes, placeholders are recognised."""

from __future__ import annotations

import pytest

from server.settings import Settings
from server.vault.identities import VaultFacts
from server.vault.production_guard import is_placeholder, violations

PRODUCTION_VAULT = VaultFacts(
    address="https://vault.internal:8200",
    storage_type="raft",
    server_policies=("mcp-server",),
    server_token_expires=True,
)


def production(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "production",
        "transport": "stdio",
        "vault_address": "https://vault.internal:8200",
        "database_password": "kT9vQ2rX7wLm4ZpB8sN1cY6hF3jD5gA0",
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


def rules(settings: Settings, facts: VaultFacts = PRODUCTION_VAULT) -> list[str]:
    return [v.rule for v in violations(settings, facts)]


def test_a_clean_production_configuration_passes() -> None:
    assert rules(production()) == []


@pytest.mark.parametrize(
    ("settings", "facts", "rule"),
    [
        (
            production(),
            VaultFacts("https://v:8200", "raft", ("root",), server_token_expires=False),
            "root token",
        ),
        (
            production(),
            VaultFacts("https://v:8200", "inmem", ("mcp-server",), server_token_expires=True),
            "dev-mode Vault",
        ),
        (production(vault_address="http://vault.internal:8200"), PRODUCTION_VAULT, "no TLS"),
        (production(vault_tls_verify=False), PRODUCTION_VAULT, "TLS verification off"),
        (production(database_password="changeme"), PRODUCTION_VAULT, "placeholder secret"),
        (
            production(database_password="<database password>"),
            PRODUCTION_VAULT,
            "placeholder secret",
        ),
    ],
)
def test_each_development_shortcut_is_a_violation(
    settings: Settings, facts: VaultFacts, rule: str
) -> None:
    assert rules(settings, facts) == [rule]


def test_placeholders_are_recognised_and_random_values_are_not() -> None:
    for value in ("", "changeme", "CHANGE_ME", "${DB_PASSWORD}", "example-password", "secret"):
        assert is_placeholder(value), value
    assert not is_placeholder("kT9vQ2rX7wLm4ZpB8sN1cY6hF3jD5gA0")
