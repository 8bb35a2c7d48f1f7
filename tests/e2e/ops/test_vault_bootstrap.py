"""The bootstrap is idempotent, and the server's credential is delivered the safe way: a
response-wrapped, single-use secret id in a file that the server checks, unwraps and deletes."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import hvac
import pytest

from ops.devstack import PDP, OpenBao
from ops.vault_bootstrap import bootstrap
from server.settings import Settings
from server.vault.client import VaultStartupError
from server.vault.identities import Identities
from tests.support import open_identities
from tools import CAPABILITIES


def admin(vault: OpenBao) -> hvac.Client:
    return hvac.Client(url=vault.address, token=vault.root_token, timeout=5)


def test_running_the_bootstrap_again_changes_nothing_and_delivers_a_new_credential(
    fresh_openbao: Callable[..., OpenBao], tmp_path: Path
) -> None:
    vault = fresh_openbao()
    root = admin(vault)
    kv = root.secrets.kv.v2
    version = kv.read_secret_metadata("tools/tickets/notifications", mount_point="secret")
    key = root.secrets.transit.read_key("accounts")["data"]["latest_version"]

    again = bootstrap(root, out_dir=tmp_path / "again", capabilities=CAPABILITIES)

    assert again.created == []
    assert len(again.unchanged) >= 11
    after = kv.read_secret_metadata("tools/tickets/notifications", mount_point="secret")
    assert after["data"]["current_version"] == version["data"]["current_version"]
    assert root.secrets.transit.read_key("accounts")["data"]["latest_version"] == key
    for delivered in (again.role_id_file, again.wrapped_secret_id_file):
        assert delivered is not None
        assert stat.S_IMODE(delivered.stat().st_mode) == 0o600


def test_a_secret_missing_a_key_of_this_release_gets_it_and_keeps_every_value_it_has(
    fresh_openbao: Callable[..., OpenBao], tmp_path: Path
) -> None:
    """A Vault bootstrapped by an earlier release (or edited by hand) lacks a key the settings
    now declare: the bootstrap adds exactly that key, and changes no value that is there."""
    vault = fresh_openbao()
    kv = admin(vault).secrets.kv.v2
    kept = {"database_password": "kept-as-it-is-0123456789abcdef", "operator_note": "mine"}
    kv.create_or_update_secret(path="mcp/server", secret=kept, mount_point="secret")

    again = bootstrap(admin(vault), out_dir=tmp_path / "again", capabilities=CAPABILITIES)

    after = kv.read_secret_version(
        path="mcp/server", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    assert {k: after[k] for k in kept} == kept
    assert set(after) == {*kept, "request_state_key"} and len(after["request_state_key"]) >= 32
    assert "secret secret/mcp/server" in again.created
    assert (
        bootstrap(admin(vault), out_dir=tmp_path / "third", capabilities=CAPABILITIES).created == []
    )


async def test_the_wrapped_secret_id_is_unwrapped_once_and_its_file_deleted(
    pdp: PDP, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(pdp)
    copy = tmp_path / "intercepted"
    shutil.copy(settings.vault_wrapped_secret_id_file, copy)
    async with open_identities(settings):
        assert not settings.vault_wrapped_secret_id_file.exists()
        assert settings.vault_role_id_file.exists()
    # Someone who copied the file before the server read it holds a spent token.
    replay = settings.model_copy(update={"vault_wrapped_secret_id_file": copy})
    with pytest.raises(VaultStartupError, match="rejected the server's login"):
        await Identities(replay).open()


async def test_a_wrapping_token_made_for_anything_else_is_refused(
    pdp: PDP, make_settings: Callable[..., Settings], vault_admin: hvac.Client
) -> None:
    settings = make_settings(pdp)
    # A wrapped answer from another endpoint (here: a token creation) instead of a secret id.
    forged = vault_admin.auth.token.create(policies=["mcp-tickets"], ttl="60s", wrap_ttl="60s")
    settings.vault_wrapped_secret_id_file.write_text(forged["wrap_info"]["token"])
    with pytest.raises(VaultStartupError, match="not created for this server's AppRole"):
        await Identities(settings).open()
    assert not settings.vault_wrapped_secret_id_file.exists()


async def test_a_missing_credential_file_is_a_clear_startup_error(
    pdp: PDP, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(pdp)
    settings.vault_wrapped_secret_id_file.unlink()
    with pytest.raises(VaultStartupError, match="no bootstrap credential"):
        await Identities(settings).open()
