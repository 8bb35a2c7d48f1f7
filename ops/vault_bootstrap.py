"""Idempotent Vault bootstrap: policies, token roles, AppRole, secrets, transit keys, and the
server's bootstrap credential delivered as files.

Run by ``make dev`` and the test fixtures, or by hand against a real Vault with an admin token
read from a file: ``python -m ops vault-bootstrap --admin-token-file FILE``. Running it again
changes nothing that exists (policies and roles are rewritten to the same content; secrets and
keys are created only when absent) and delivers a fresh credential.

What it sets up, from the plan ``ops.vault_plan`` renders from the registered capabilities:

- the server's policy ``mcp-server`` and one policy ``mcp-X`` per identity X;
- for every identity: a token role ``mcp-X`` that can only give out the policy ``mcp-X``,
  without the default policy (so children cannot look up, renew or create tokens), non-orphan
  (children die with the server's token), bounded by ``token_explicit_max_ttl`` (token roles
  silently ignore ``token_ttl``/``token_max_ttl``);
- the AppRole ``mcp-server`` whose tokens hold only ``mcp-server`` (no default policy);
- every declared KV secret (random first values, created only if absent) and transit key;
- the credential: ``role-id`` and ``secret-id.wrapped`` (a response-wrapped secret id that only
  the server unwraps, once) in the output directory, mode 0600;
- with a PostgreSQL store (``database=DatabaseSetup(...)``): the registered capabilities' tables,
  created by the database's owner login (``ops.store_schema``); the database secrets engine; its
  connection, which Vault uses with that owner login to create and drop users; and one database
  role per capability (``ops.vault_plan.DatabaseRole``). The owner's password comes from the
  operator as a file, never from configuration; it goes to Vault's connection configuration
  (which Vault never returns) and nowhere else.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
from sqlalchemy.engine import make_url

from ops.store_schema import create_tables
from ops.vault_plan import SERVER_POLICY, VaultNames, VaultPlan, plan
from server.capability.declaration import Capability
from server.capability.registry import all_tables
from server.settings import Settings
from server.vault.settings_source import vault_fields


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
    database_mount: str = "database"
    database_connection: str = "mcp"
    # A database login's lease (and its user's VALID UNTIL); the server re-issues logins well
    # before, as each one also dies with the identity token that obtained it.
    database_credential_ttl: int = 900

    @classmethod
    def from_settings(cls, settings: Settings) -> BootstrapConfig:
        """The mounts and role names the server will look for; lifetimes keep their defaults."""
        return cls(
            approle_mount=settings.vault_approle_mount,
            server_role=settings.vault_approle_role,
            role_prefix=settings.vault_role_prefix,
            kv_mount=settings.vault_kv_mount,
            transit_mount=settings.vault_transit_mount,
            database_mount=settings.vault_database_mount,
        )

    @property
    def names(self) -> VaultNames:
        return VaultNames(self.role_prefix, self.kv_mount, self.transit_mount, self.database_mount)


@dataclass(frozen=True)
class DatabaseSetup:
    """What the bootstrap needs for a PostgreSQL store: the store's URL (host, port, database;
    no user, no password) and the owner login Vault will use, its password read from a file."""

    url: str
    admin_user: str
    admin_password_file: Path = field(repr=True)

    def admin_password(self) -> str:
        password = self.admin_password_file.read_text().strip()
        if not password:
            raise SystemExit(f"{self.admin_password_file} is empty")
        return password

    @property
    def host_port_database(self) -> tuple[str, int, str]:
        url = make_url(self.url)
        if url.get_backend_name() != "postgresql" or not url.host or not url.database:
            raise SystemExit(f"not a PostgreSQL URL with a host and a database: {self.url}")
        return url.host, url.port or 5432, url.database


@dataclass
class BootstrapResult:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    role_id_file: Path | None = None
    wrapped_secret_id_file: Path | None = None

    def note(self, what: str, *, created: bool) -> None:
        (self.created if created else self.unchanged).append(what)


def bootstrap(
    admin: hvac.Client,
    *,
    out_dir: Path,
    capabilities: Iterable[Capability],
    config: BootstrapConfig | None = None,
    database: DatabaseSetup | None = None,
) -> BootstrapResult:
    config = config or BootstrapConfig()
    result = BootstrapResult()
    capabilities = list(capabilities)
    wanted = plan(capabilities, config.names)

    for name, hcl in wanted.policies.items():
        current = _read(admin, f"sys/policies/acl/{name}")
        same = current is not None and current["policy"] == hcl
        if not same:
            admin.sys.create_or_update_policy(name=name, policy=hcl)
        result.note(f"policy {name}", created=not same)

    for identity in wanted.identities:
        role = wanted.role(identity)
        settings = {
            "allowed_policies": [role],
            "disallowed_policies": ["root", SERVER_POLICY],
            "orphan": False,
            "renewable": False,
            "token_type": "service",
            "token_no_default_policy": True,
            "token_explicit_max_ttl": config.child_token_max_ttl,
        }
        before = _read(admin, f"auth/token/roles/{role}")
        admin.write_data(f"auth/token/roles/{role}", data=settings)
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
        _wait_for_kv_v2(admin, config.kv_mount)
    for path, keys in wanted.secrets.items():
        current = _read(admin, f"{config.kv_mount}/data/{path}")
        held = (current or {}).get("data") or {}
        missing = {key: generate for key, generate in keys.items() if key not in held}
        if missing:
            value = {**held, **{key: generate() for key, generate in missing.items()}}
            # cas: create only (0), or add the missing keys to exactly the version read (a
            # secret that gained a key in a later release); never overwrite a value someone
            # else wrote in the meantime, never change a key that is there.
            version = 0 if current is None else int(current["metadata"]["version"])
            admin.secrets.kv.v2.create_or_update_secret(
                path=path, secret=value, cas=version, mount_point=config.kv_mount
            )
        result.note(f"secret {config.kv_mount}/{path}", created=bool(missing))

    if f"{config.transit_mount}/" not in mounts:
        admin.sys.enable_secrets_engine("transit", path=config.transit_mount)
        result.note(f"transit mount {config.transit_mount}", created=True)
    for key, key_type in wanted.transit_keys.items():
        exists = _read(admin, f"{config.transit_mount}/keys/{key}") is not None
        if not exists:
            admin.secrets.transit.create_key(
                name=key, key_type=key_type, mount_point=config.transit_mount
            )
        result.note(f"transit key {key}", created=not exists)

    if database is not None:
        _database_engine(admin, database, capabilities, wanted, config, result)

    result.role_id_file, result.wrapped_secret_id_file = deliver_server_credential(
        admin, out_dir=out_dir, config=config
    )
    return result


def _database_engine(
    admin: hvac.Client,
    database: DatabaseSetup,
    capabilities: list[Capability],
    wanted: VaultPlan,
    config: BootstrapConfig,
    result: BootstrapResult,
) -> None:
    """Tables (as the owner), the database engine, its connection and one role per capability."""
    host, port, name = database.host_port_database
    password = database.admin_password()
    created = create_tables(
        host=host,
        port=port,
        database=name,
        user=database.admin_user,
        password=password,
        tables=all_tables(capabilities),
    )
    for table in created:
        result.note(f"table {table}", created=True)
    mounts = admin.sys.list_mounted_secrets_engines()["data"]
    mount = config.database_mount
    if f"{mount}/" not in mounts:
        admin.sys.enable_secrets_engine("database", path=mount)
        result.note(f"database mount {mount}", created=True)
    # Vault fills {{username}} and {{password}} in itself; neither is in the URL it stores.
    connection_url = f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{port}/{name}"
    admin.write_data(
        f"{mount}/config/{config.database_connection}",
        data={
            "plugin_name": "postgresql-database-plugin",
            "connection_url": connection_url,
            "username": database.admin_user,
            "password": password,
            "password_authentication": "scram-sha-256",
            "allowed_roles": [role.name for role in wanted.database_roles],
            "verify_connection": True,
        },
    )
    result.note(f"database connection {config.database_connection}", created=True)
    for role in wanted.database_roles:
        path = f"{mount}/roles/{role.name}"
        before = _read(admin, path)
        admin.write_data(
            path,
            data={
                "db_name": config.database_connection,
                "creation_statements": role.creation_statements(name),
                "revocation_statements": role.revocation_statements(name),
                "default_ttl": config.database_credential_ttl,
                "max_ttl": config.database_credential_ttl,
            },
        )
        result.note(f"database role {role.name}", created=before != _read(admin, path))


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


def _wait_for_kv_v2(admin: hvac.Client, mount: str, timeout: float = 15) -> None:
    """A new KV v2 mount first upgrades itself and answers 400 ("Upgrading from non-versioned to
    versioned data") until it is done; wait for that instead of failing the bootstrap."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.read(f"{mount}/config")
            return
        except hvac.exceptions.InvalidRequest:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


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
    where = vault_fields(Settings)["database_password"]
    secret = admin.secrets.kv.v2.read_secret_version(
        path=where.path, mount_point=kv_mount, raise_on_deleted_version=True
    )
    _write_private(path, str(secret["data"]["data"][where.key]))
