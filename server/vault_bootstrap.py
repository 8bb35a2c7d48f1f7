"""Idempotent Vault bootstrap: policies, token roles, AppRole, demo secrets, transit key, and the
server's bootstrap credential delivered as files.

Run by ``make dev`` and the test fixtures, or by hand against a real Vault with an admin token
read from a file: ``python -m server vault-bootstrap --admin-token-file FILE``. Running it again
changes nothing that exists (policies and roles are rewritten to the same content; secrets and
keys are created only when absent) and delivers a fresh credential.

What it sets up, from ``config/vault/policies/``:

- one policy per ``*.hcl`` file, named after the file;
- for every identity policy ``mcp-X`` (all but ``mcp-server``): a token role ``mcp-X`` that can
  only give out the policy ``mcp-X``, without the default policy (so children cannot look up,
  renew or create tokens), non-orphan (children die with the server's token), bounded by
  ``token_explicit_max_ttl`` (token roles silently ignore ``token_ttl``/``token_max_ttl``);
- the AppRole ``mcp-server`` whose tokens hold only ``mcp-server`` (no default policy);
- demo secrets (random values, created only if absent) and the ``accounts`` transit key;
- the credential: ``role-id`` and ``secret-id.wrapped`` (a response-wrapped secret id that only
  the server unwraps, once) in the output directory, mode 0600.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import hvac
import hvac.exceptions

CONFIG_DIR: Final = Path(__file__).resolve().parent.parent / "config" / "vault"
POLICY_DIR: Final = CONFIG_DIR / "policies"
SERVER_POLICY: Final = "mcp-server"


def _random_key() -> str:
    return secrets.token_urlsafe(32)


# KV v2 secrets the demo needs, by path: key -> generator of a random value. Names only; the
# values exist only in Vault.
DATABASE_SECRET_PATH: Final = "mcp/server"  # noqa: S105 - a Vault path, not a value
DATABASE_PASSWORD_KEY: Final = "database_password"  # noqa: S105 - a key name
DEMO_SECRETS: Final[dict[str, dict[str, Callable[[], str]]]] = {
    "tools/tickets/notifications": {"signing_key": _random_key},
    DATABASE_SECRET_PATH: {DATABASE_PASSWORD_KEY: _random_key},
}
TRANSIT_KEYS: Final = {"accounts": "aes256-gcm96"}


@dataclass(frozen=True)
class BootstrapConfig:
    approle_mount: str = "approle"
    server_role: str = "mcp-server"
    role_prefix: str = "mcp-"
    kv_mount: str = "secret"
    transit_mount: str = "transit"
    # Lifetimes in seconds.
    server_token_ttl: int = 3600
    server_token_max_ttl: int = 4 * 3600
    child_token_max_ttl: int = 3600
    secret_id_ttl: int = 30 * 24 * 3600
    wrap_ttl: int = 300
    policy_dir: Path = POLICY_DIR


@dataclass
class BootstrapResult:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    role_id_file: Path | None = None
    wrapped_secret_id_file: Path | None = None

    def note(self, what: str, *, created: bool) -> None:
        (self.created if created else self.unchanged).append(what)


class BootstrapError(RuntimeError):
    pass


def load_policies(policy_dir: Path = POLICY_DIR) -> dict[str, str]:
    policies = {p.stem: p.read_text() for p in sorted(policy_dir.glob("*.hcl"))}
    if SERVER_POLICY not in policies:
        raise BootstrapError(f"{policy_dir} has no {SERVER_POLICY}.hcl")
    return policies


def identity_roles(policies: dict[str, str], prefix: str) -> list[str]:
    return [name for name in policies if name != SERVER_POLICY and name.startswith(prefix)]


def check_server_policy(policies: dict[str, str], prefix: str) -> None:
    """The server may mint exactly the identities that have a policy: no more, no fewer."""
    mintable = set(re.findall(r'path\s+"auth/token/create/([^"]+)"', policies[SERVER_POLICY]))
    roles = set(identity_roles(policies, prefix))
    if mintable != roles:
        raise BootstrapError(
            f"{SERVER_POLICY}.hcl mints {sorted(mintable)} but the identity policies are "
            f"{sorted(roles)}: they must match"
        )


def bootstrap(
    admin: hvac.Client, *, out_dir: Path, config: BootstrapConfig | None = None
) -> BootstrapResult:
    config = config or BootstrapConfig()
    result = BootstrapResult()
    policies = load_policies(config.policy_dir)
    check_server_policy(policies, config.role_prefix)

    for name, hcl in policies.items():
        current = _read(admin, f"sys/policies/acl/{name}")
        same = current is not None and current["policy"] == hcl
        if not same:
            admin.sys.create_or_update_policy(name=name, policy=hcl)
        result.note(f"policy {name}", created=not same)

    for role in identity_roles(policies, config.role_prefix):
        wanted = {
            "allowed_policies": [role],
            "disallowed_policies": ["root", SERVER_POLICY],
            "orphan": False,
            "renewable": False,
            "token_type": "service",
            "token_no_default_policy": True,
            "token_explicit_max_ttl": config.child_token_max_ttl,
        }
        before = _read(admin, f"auth/token/roles/{role}")
        admin.write_data(f"auth/token/roles/{role}", data=wanted)
        after = _read(admin, f"auth/token/roles/{role}")
        result.note(f"token role {role}", created=before != after)

    auth_methods = admin.sys.list_auth_methods()["data"]
    if f"{config.approle_mount}/" not in auth_methods:
        admin.sys.enable_auth_method(method_type="approle", path=config.approle_mount)
        result.note(f"auth method {config.approle_mount}", created=True)
    before = _read(admin, f"auth/{config.approle_mount}/role/{config.server_role}")
    admin.auth.approle.create_or_update_approle(
        role_name=config.server_role,
        token_policies=[SERVER_POLICY],
        token_no_default_policy=True,
        token_type="service",  # noqa: S106 - a token kind, not a password
        token_ttl=config.server_token_ttl,
        token_max_ttl=config.server_token_max_ttl,
        secret_id_ttl=config.secret_id_ttl,
        secret_id_num_uses=0,  # re-login after max TTL uses the same (in-memory) secret id
        mount_point=config.approle_mount,
    )
    after = _read(admin, f"auth/{config.approle_mount}/role/{config.server_role}")
    result.note(f"approle {config.server_role}", created=before != after)

    mounts = admin.sys.list_mounted_secrets_engines()["data"]
    if f"{config.kv_mount}/" not in mounts:
        admin.sys.enable_secrets_engine("kv", path=config.kv_mount, options={"version": "2"})
        result.note(f"kv mount {config.kv_mount}", created=True)
    for path, keys in DEMO_SECRETS.items():
        exists = _read(admin, f"{config.kv_mount}/data/{path}") is not None
        if not exists:
            value = {key: generate() for key, generate in keys.items()}
            # cas=0: create only; never overwrite a secret someone else wrote in the meantime.
            admin.secrets.kv.v2.create_or_update_secret(
                path=path, secret=value, cas=0, mount_point=config.kv_mount
            )
        result.note(f"secret {config.kv_mount}/{path}", created=not exists)

    if f"{config.transit_mount}/" not in mounts:
        admin.sys.enable_secrets_engine("transit", path=config.transit_mount)
        result.note(f"transit mount {config.transit_mount}", created=True)
    for key, key_type in TRANSIT_KEYS.items():
        exists = _read(admin, f"{config.transit_mount}/keys/{key}") is not None
        if not exists:
            admin.secrets.transit.create_key(
                name=key, key_type=key_type, mount_point=config.transit_mount
            )
        result.note(f"transit key {key}", created=not exists)

    result.role_id_file, result.wrapped_secret_id_file = deliver_server_credential(
        admin, out_dir=out_dir, config=config
    )
    return result


def deliver_server_credential(
    admin: hvac.Client, *, out_dir: Path, config: BootstrapConfig | None = None
) -> tuple[Path, Path]:
    """Write ``role-id`` and a fresh response-wrapped secret id to ``out_dir`` (mode 0600).

    The secret id itself never exists outside Vault and the server: the file holds a single-use
    wrapping token that expires after ``wrap_ttl``.
    """
    config = config or BootstrapConfig()
    role_id = admin.auth.approle.read_role_id(config.server_role, mount_point=config.approle_mount)[
        "data"
    ]["role_id"]
    wrapped = admin.auth.approle.generate_secret_id(
        config.server_role, wrap_ttl=config.wrap_ttl, mount_point=config.approle_mount
    )["wrap_info"]["token"]
    role_id_file = _write_private(out_dir / "role-id", role_id)
    secret_file = _write_private(out_dir / "secret-id.wrapped", wrapped)
    return role_id_file, secret_file


def _read(admin: hvac.Client, path: str) -> Any:
    """The ``data`` of a read, or None when the path does not exist."""
    try:
        response = admin.read(path)
    except hvac.exceptions.InvalidPath:
        return None
    return None if response is None else response.get("data")


def _write_private(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def export_database_password(admin: hvac.Client, path: Path, *, kv_mount: str = "secret") -> None:
    """Write the database password Vault holds to ``path`` (0600), for a database server that is
    initialised from a file (e.g. a compose service). The server itself reads it from Vault."""
    secret = admin.secrets.kv.v2.read_secret_version(
        path=DATABASE_SECRET_PATH, mount_point=kv_mount, raise_on_deleted_version=True
    )
    _write_private(path, str(secret["data"]["data"][DATABASE_PASSWORD_KEY]))
