"""Refuse to run in production on development shortcuts; say loudly when running in development.

Checked at startup, after the server has logged in to Vault and read its settings-level secrets,
so the checks see the real token and the real values:

- a root token (or any token holding the ``root`` policy) as the server's credential;
- a dev-mode Vault (in-memory storage: everything is lost on restart and a root token exists);
- TLS verification off, or no TLS at all, towards Vault;
- placeholder values in settings-level secrets (``changeme``, ``<...>``, ``example``...).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from pydantic import SecretStr

from server.settings import Settings
from server.vault.identities import VaultFacts
from server.vault.settings_source import vault_fields

log = logging.getLogger(__name__)

PLACEHOLDER: Final = re.compile(
    r"^\s*$|^<.*>$|^\$\{.*\}$|change[-_ ]?me|placeholder|example|dummy|^(?:secret|password|"
    r"test|dev|default|todo|xxx+|none|null)$",
    re.IGNORECASE,
)


class ProductionGuardError(RuntimeError):
    pass


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


def is_placeholder(value: str) -> bool:
    return bool(PLACEHOLDER.search(value))


def violations(settings: Settings, facts: VaultFacts) -> list[Violation]:
    found: list[Violation] = []
    if "root" in facts.server_policies:
        found.append(Violation("root token", "the server's Vault token holds the root policy"))
    if facts.dev_server:
        found.append(
            Violation("dev-mode Vault", f"{facts.address} keeps its data in memory (dev server)")
        )
    if urlsplit(settings.vault_address).scheme != "https":
        found.append(Violation("no TLS", f"{settings.vault_address} is not https"))
    if not settings.vault_tls_verify:
        found.append(Violation("TLS verification off", "MCP_VAULT_TLS_VERIFY is false"))
    for name in vault_fields(type(settings)):
        value = getattr(settings, name)
        if isinstance(value, SecretStr) and is_placeholder(value.get_secret_value()):
            # The field name only: never the value.
            found.append(Violation("placeholder secret", f"{name} holds a placeholder value"))
    return found


def enforce(settings: Settings, facts: VaultFacts) -> None:
    """Production: raise on any violation. Development: log every shortcut, loudly."""
    found = violations(settings, facts)
    if settings.environment == "production":
        if found:
            raise ProductionGuardError(
                "refusing to start in production: " + "; ".join(str(v) for v in found)
            )
        return
    log.warning(
        "DEVELOPMENT MODE: not for production. Vault %s (%s)%s",
        facts.address,
        "dev server, in memory" if facts.dev_server else f"storage {facts.storage_type}",
        "".join(f"; {v}" for v in found),
    )
