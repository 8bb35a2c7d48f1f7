"""An admin's Vault client for operator commands, built like the server's own clients (explicit
token, short timeout, never VAULT_TOKEN or ~/.vault-token)."""

from __future__ import annotations

from pathlib import Path

import hvac

from server.settings import Settings
from server.vault.client import ClientLabel, VaultRequestLog, make_client
from server.vault.identities import endpoint_from


def admin_client(settings: Settings, token: str) -> hvac.Client:
    return make_client(
        endpoint_from(settings), token, label=ClientLabel("admin"), requests_log=VaultRequestLog()
    )


def read_token_file(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise SystemExit(f"{path} is empty")
    return token
