"""A pydantic-settings source for settings-level secrets stored in Vault's KV v2 engine.

Mark a field with ``FromVault``::

    database_password: Annotated[SecretStr | None, FromVault("mcp/server", "database_password")]

Precedence, for marked fields only: **Vault, then** init arguments, environment variables, the
dotenv file, secret files, the default. Vault comes first so that a stale variable cannot shadow
a rotated secret; when Vault has no such path or key, the next source applies. Unmarked fields
never come from Vault.

Failing closed: a 403, a sealed or unreachable Vault or a timeout raises ``SecretsUnavailable``
out of the settings constructor (no silent fallback to env or defaults, unlike the published
packages); only a missing path or key (404) lets later sources apply.

pydantic-settings builds its sources inside ``BaseSettings.__init__`` and gives them no extra
arguments, so the reader (a function bound to an authenticated Vault identity) is handed over
through a context variable: ``with reading_from_vault(reader): Settings(...)``. Outside that block
the source finds nothing. The markers stay out of the JSON schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

# path (relative to the KV mount) -> the secret's key/value data, or None when it does not exist.
SecretReader = Callable[[str], Mapping[str, Any] | None]

S = TypeVar("S", bound=BaseSettings)

_active_reader: ContextVar[SecretReader | None] = ContextVar("vault_settings_reader", default=None)


@dataclass(frozen=True)
class FromVault:
    """Field metadata: the value is the key ``key`` of the KV v2 secret at ``path``."""

    path: str
    key: str


def vault_marker(field: FieldInfo) -> FromVault | None:
    return next((m for m in field.metadata if isinstance(m, FromVault)), None)


def vault_fields(settings_cls: type[BaseSettings]) -> dict[str, FromVault]:
    return {
        name: marker
        for name, field in settings_cls.model_fields.items()
        if (marker := vault_marker(field)) is not None
    }


def active_vault_reader() -> SecretReader | None:
    return _active_reader.get()


@contextmanager
def reading_from_vault(reader: SecretReader) -> Iterator[None]:
    token = _active_reader.set(reader)
    try:
        yield
    finally:
        _active_reader.reset(token)


class VaultSettingsSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], reader: SecretReader | None) -> None:
        super().__init__(settings_cls)
        self.reader = reader
        # One read per path, however many fields it holds.
        self._secrets: dict[str, Mapping[str, Any] | None] = {}

    def _secret(self, path: str) -> Mapping[str, Any] | None:
        if path not in self._secrets:
            assert self.reader is not None
            self._secrets[path] = self.reader(path)  # raises SecretsUnavailable: fail closed
        return self._secrets[path]

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        marker = vault_marker(field)
        if marker is None or self.reader is None:
            return None, field_name, False
        secret = self._secret(marker.path)
        if secret is None or secret.get(marker.key) is None:
            return None, field_name, False
        return secret[marker.key], field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                values[key] = value
        return values


def with_vault_secrets(settings: S, reader: SecretReader) -> S:
    """``settings`` rebuilt with its FromVault fields read through ``reader``.

    Every other field keeps its current value exactly (it is passed back as an argument); a marked
    field keeps its current value only where Vault has nothing for it.
    """
    current = {name: getattr(settings, name) for name in type(settings).model_fields}
    with reading_from_vault(reader):
        return type(settings)(**current)
