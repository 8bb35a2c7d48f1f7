"""The Vault client verifies TLS as configured: with MCP_VAULT_CA_FILE, against that CA only."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.vault.client import ClientLabel, VaultEndpoint, VaultRequestLog, make_client


@pytest.mark.parametrize("verify", ["/etc/mcp/vault-ca.pem", True, False])
def test_the_client_verifies_with_the_configured_ca_file_or_setting(
    verify: str | bool, tmp_path: Path
) -> None:
    client = make_client(
        VaultEndpoint("https://vault.internal:8200", 2.0, verify),
        None,
        label=ClientLabel("admin"),
        requests_log=VaultRequestLog(),
    )
    # What every request is sent with (hvac passes these to requests for each call).
    assert client.adapter._kwargs["verify"] == verify
    assert client.adapter.session.verify == verify
    assert client.adapter.session.trust_env is False
