"""Production refuses development shortcuts (root token, dev-mode Vault, no TLS or no
verification, placeholder secrets); development says loudly that it is development."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import hvac
import pytest

from ops.devstack import PDP, OpenBao
from server.runtime import build_runtime
from server.settings import Settings
from server.vault.production_guard import ProductionGuardError


async def test_production_against_a_dev_vault_with_a_root_token_refuses_to_start(
    pdp: PDP, make_settings: Callable[..., Settings], openbao: OpenBao, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(openbao.root_token)
    settings = make_settings(
        pdp, environment="production", vault_login="token_file", vault_token_file=token_file
    )
    runtime = build_runtime(settings)
    try:
        with pytest.raises(ProductionGuardError) as refused:
            await runtime.start()
    finally:
        token_file.unlink()  # a root token on disk, placed by this test only
    message = str(refused.value)
    assert "root token" in message and "dev-mode Vault" in message and "no TLS" in message
    assert openbao.root_token not in message


async def test_production_refuses_a_placeholder_secret_without_showing_it(
    pdp: PDP, make_settings: Callable[..., Settings], fresh_openbao: Callable[..., OpenBao]
) -> None:
    vault = fresh_openbao()
    hvac.Client(
        url=vault.address, token=vault.root_token, timeout=5
    ).secrets.kv.v2.create_or_update_secret(
        path="mcp/server", secret={"database_password": "changeme"}, mount_point="secret"
    )
    runtime = build_runtime(make_settings(pdp, vault=vault, environment="production"))
    with pytest.raises(ProductionGuardError) as refused:
        await runtime.start()
    assert "placeholder secret: database_password" in str(refused.value)
    assert "changeme" not in str(refused.value)


async def test_development_mode_says_so_loudly(
    pdp: PDP, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    runtime = build_runtime(make_settings(pdp))
    with caplog.at_level(logging.WARNING, logger="server.vault.production_guard"):
        await runtime.start()
    await runtime.close()
    loud = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DEVELOPMENT MODE: not for production" in r.getMessage() for r in loud)
    assert any("dev server, in memory" in r.getMessage() for r in loud)
