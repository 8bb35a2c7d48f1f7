"""The pydantic-settings Vault source: documented precedence, and fail-closed on 403, sealed or
unreachable Vault (never a silent fallback to env or defaults)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import hvac
import pytest

from ops.devstack import PDP, OpenBao
from server.settings import Settings
from server.vault.client import UNAVAILABLE_TEXT, SecretsUnavailable
from server.vault.identities import Identities
from server.vault.settings_source import SecretReader, reading_from_vault, with_vault_secrets
from tests.support import CANARIES, open_identities


@pytest.fixture
async def identities(pdp: PDP, make_settings: Callable[..., Settings]) -> AsyncIterator[Identities]:
    async with open_identities(make_settings(pdp)) as opened:
        yield opened


@pytest.fixture
async def reader(identities: Identities) -> SecretReader:
    return await identities.settings_reader()


def vault_password() -> str:
    return next(c for c in CANARIES if c.startswith("canary-database-password-"))


def elsewhere(reader: SecretReader, path: str) -> SecretReader:
    """The same Vault identity, reading another path (one it may read or not)."""
    return lambda _: reader(path)


def counting(reader: SecretReader, calls: list[str]) -> SecretReader:
    def read(path: str) -> Mapping[str, Any] | None:
        calls.append(path)
        return reader(path)

    return read


async def test_vault_wins_over_arguments_environment_and_defaults(
    reader: SecretReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_DATABASE_PASSWORD", "from-the-environment")
    with reading_from_vault(reader):
        settings = Settings(transport="stdio", database_password="from-an-argument")
    assert settings.database_password is not None
    assert settings.database_password.get_secret_value() == vault_password()


async def test_without_the_secret_in_vault_the_next_sources_apply_in_order(
    pdp: PDP,
    make_settings: Callable[..., Settings],
    fresh_openbao: Callable[..., OpenBao],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vault = fresh_openbao()
    admin = hvac.Client(url=vault.address, token=vault.root_token, timeout=5)
    admin.secrets.kv.v2.delete_metadata_and_all_versions(path="mcp/server", mount_point="secret")
    async with open_identities(make_settings(pdp, vault=vault)) as identities:
        absent = await identities.settings_reader()  # Vault answers 404: nothing there
        with reading_from_vault(absent):
            assert Settings(transport="stdio").database_password is None  # the default
            monkeypatch.setenv("MCP_DATABASE_PASSWORD", "from-the-environment")
            from_env = Settings(transport="stdio").database_password
            from_argument = Settings(transport="stdio", database_password="arg").database_password
    assert from_env is not None and from_env.get_secret_value() == "from-the-environment"
    assert from_argument is not None and from_argument.get_secret_value() == "arg"


async def test_unmarked_fields_never_come_from_vault(reader: SecretReader) -> None:
    with reading_from_vault(reader):
        settings = Settings(transport="stdio")
    assert settings.server_name == "mcp-server-template"  # not looked up in Vault at all


async def test_one_read_per_path_and_every_other_field_kept(
    reader: SecretReader, pdp: PDP, make_settings: Callable[..., Settings]
) -> None:
    before = make_settings(pdp, server_name="kept", max_body_bytes=1234)
    calls: list[str] = []
    after = with_vault_secrets(before, counting(reader, calls))
    assert calls == ["mcp/server"]
    assert after.server_name == "kept" and after.max_body_bytes == 1234
    assert after.port == before.port and after.vault_address == before.vault_address
    assert after.database_password is not None
    assert after.database_password.get_secret_value() == vault_password()


async def test_a_403_fails_closed_instead_of_falling_back(
    reader: SecretReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_DATABASE_PASSWORD", "fallback-that-must-not-be-used")
    forbidden = elsewhere(reader, "tools/tickets/notifications")  # not the settings identity's
    with reading_from_vault(forbidden), pytest.raises(SecretsUnavailable) as failed:
        Settings(transport="stdio")
    assert failed.value.reason == "forbidden"


async def test_a_sealed_vault_fails_closed(
    pdp: PDP, make_settings: Callable[..., Settings], fresh_openbao: Callable[..., OpenBao]
) -> None:
    vault = fresh_openbao()
    async with open_identities(make_settings(pdp, vault=vault)) as identities:
        sealed_reader = await identities.settings_reader()
        hvac.Client(url=vault.address, token=vault.root_token, timeout=5).sys.seal()
        with reading_from_vault(sealed_reader), pytest.raises(SecretsUnavailable) as failed:
            Settings(transport="stdio")
    assert failed.value.reason == "sealed" and str(failed.value) == UNAVAILABLE_TEXT


async def test_an_unreachable_vault_fails_closed_within_the_short_timeout(
    pdp: PDP, make_settings: Callable[..., Settings], fresh_openbao: Callable[..., OpenBao]
) -> None:
    vault = fresh_openbao()
    settings = make_settings(pdp, vault=vault, vault_timeout_seconds=1)
    async with open_identities(settings) as identities:
        stranded = await identities.settings_reader()
        vault.process.stop()
        started = time.monotonic()
        with reading_from_vault(stranded), pytest.raises(SecretsUnavailable) as failed:
            Settings(transport="stdio")
        assert failed.value.reason == "unreachable"
        assert time.monotonic() - started < 2


def test_vault_markers_and_values_stay_out_of_the_schema_and_repr() -> None:
    schema = json.dumps(Settings.model_json_schema())
    assert "mcp/server" not in schema and "FromVault" not in schema
    settings = Settings(transport="stdio", database_password="not-shown")
    assert "not-shown" not in repr(settings) and "not-shown" not in settings.model_dump_json()


def test_settings_outside_a_vault_block_read_nothing_from_vault() -> None:
    assert Settings(transport="stdio").database_password is None
