"""What a capability declares: the one object the runtime learns everything about it from.

A capability is a package under ``tools/`` (tickets, accounts, ...) that owns its tools, resources
and prompts, its tables and demo rows, the record kinds its policies decide on, and what it needs
from Vault. The runtime names no capability: the Vault identities it mints, the secrets and keys
the bootstrap creates, the rows it seeds, the server's instructions and the access tables are all
derived from the ``Capability`` objects it is given.

Declarations are checked when they are made (``Capability(...)`` raises on a malformed one) and
when a server is built (``server.capability.registry``), so a mistake stops the server at startup
with the capability's and the tool's name, never at the first call.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from server.authz.records import RecordPolicy
from server.store.core import Base

if TYPE_CHECKING:
    from server.vault.identities import ToolIdentity

NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
TRANSIT_KEY_TYPES: Final = ("aes256-gcm96", "chacha20-poly1305", "ed25519", "ecdsa-p256")

__all__ = [
    "Capability",
    "InvalidDeclaration",
    "RecordPolicy",
    "SeedContext",
    "VaultNeeds",
    "component_name",
    "random_secret",
]


class InvalidDeclaration(ValueError):
    """A capability declares something the runtime cannot honour."""


def random_secret() -> str:
    """A fresh random value for a KV secret the bootstrap creates (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class VaultNeeds:
    """A capability's own Vault identity and what that identity may reach.

    ``secrets``: KV v2 paths (relative to the KV mount, under ``tools/<identity>/``) and, for
    each key, how the bootstrap generates its first value. ``transit_keys``: transit key name ->
    key type; the identity may encrypt and decrypt with them and nothing else. The identity's
    Vault policy (``config/vault/policies/mcp-<identity>.hcl``) is generated from exactly this.
    """

    identity: str
    secrets: Mapping[str, Mapping[str, Callable[[], str]]] = field(default_factory=dict)
    transit_keys: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not NAME.match(self.identity):
            raise InvalidDeclaration(f"Vault identity {self.identity!r}: use [a-z][a-z0-9_]*")
        prefix = f"tools/{self.identity}/"
        for path, keys in self.secrets.items():
            if not path.startswith(prefix) or not re.fullmatch(r"[a-z0-9_/-]+", path):
                raise InvalidDeclaration(
                    f"Vault identity {self.identity!r}: secret path {path!r} must lie under "
                    f"{prefix!r} (its policy grants that prefix only)"
                )
            if not keys:
                raise InvalidDeclaration(f"secret {path!r} declares no keys")
        for key, key_type in self.transit_keys.items():
            if not NAME.match(key) or key_type not in TRANSIT_KEY_TYPES:
                raise InvalidDeclaration(
                    f"transit key {key!r} of type {key_type!r}: name [a-z][a-z0-9_]*, "
                    f"type one of {TRANSIT_KEY_TYPES}"
                )


@dataclass(frozen=True)
class SeedContext:
    """What seeding gets: the capability's own Vault identity (None when it declares none)."""

    identity: ToolIdentity | None


Seed = Callable[[SeedContext], Awaitable[Sequence[Any]]]


@dataclass(frozen=True)
class Capability:
    """Everything the runtime needs to know about one capability.

    ``tools``, ``resources`` and ``prompts`` are top-level functions decorated with FastMCP's
    standalone ``@tool`` / ``@resource`` / ``@prompt``; each must declare ``meta`` with
    ``department`` and ``sensitivity`` (the tool gate's attributes). ``examples`` holds valid
    arguments for every tool (tests, reports and the interop tier call tools with them).
    ``models`` are the tables it owns; ``seed`` adds demo rows to them when they are empty.
    """

    name: str
    instructions: str
    tools: Sequence[Callable[..., Any]] = ()
    resources: Sequence[Callable[..., Any]] = ()
    prompts: Sequence[Callable[..., Any]] = ()
    examples: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    models: Sequence[type[Base]] = ()
    seed: Seed | None = None
    records: Sequence[RecordPolicy[Any]] = ()
    vault: VaultNeeds | None = None

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise InvalidDeclaration(f"capability {self.name!r}: use [a-z][a-z0-9_]*")
        names = [component_name(fn) for fn in self.tools]
        if len(set(names)) != len(names):
            raise InvalidDeclaration(f"capability {self.name!r} lists a tool twice: {names}")
        missing = sorted(set(names) - set(self.examples))
        if missing:
            raise InvalidDeclaration(
                f"capability {self.name!r}: no example arguments for {missing} "
                f"(add them to `examples` in tools/{self.name}/__init__.py)"
            )
        unknown = sorted(set(self.examples) - set(names))
        if unknown:
            raise InvalidDeclaration(
                f"capability {self.name!r}: examples for tools it does not list: {unknown}"
            )

    @property
    def identity(self) -> str | None:
        return self.vault.identity if self.vault is not None else None


def component_name(fn: Callable[..., Any]) -> str:
    """The MCP name of a decorated tool, resource or prompt function."""
    meta = getattr(fn, "__fastmcp__", None)
    if meta is None:
        raise InvalidDeclaration(
            f"{getattr(fn, '__qualname__', fn)!r} is not decorated with FastMCP's standalone "
            "@tool, @resource or @prompt"
        )
    return str(getattr(meta, "name", None) or fn.__name__)
