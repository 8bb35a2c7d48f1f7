"""The server's Vault login and one short-lived Vault identity per tool.

The server logs in once with its bootstrap credential (AppRole: a role id plus a response-wrapped
secret id read from files; or a token file kept fresh by an agent). Its token may do one thing:
create child tokens through one token role per identity (``mcp-tickets``, ``mcp-accounts``,
``mcp-settings``), each child holding only that identity's policy. Tools get a ``ToolIdentity``
by injection; it exposes operations (read a KV secret, encrypt, decrypt), never a token, and
never the server's token or the caller's bearer token.

Lifetimes (all in-process, monotonic clock; a lease's expiry is measured from *before* the request
that created it, so it errs early):

- a child token is re-minted once two thirds of its TTL have passed, and never used after
  ``usable_until`` (its expiry minus a safety margin, bounded by the parent's expiry, since a
  child dies with its parent). Children are re-minted, not renewed: token roles with
  ``token_no_default_policy`` cannot renew themselves.
- the server's token is renewed at two thirds of its TTL; when it cannot be renewed long enough
  (max TTL reached) or it is rejected (403), the server logs in again.
- a 403 from Vault means "denied" *or* "token expired/revoked": an operation that gets one
  re-mints its identity once and retries; a second 403 is a denial.
- KV secrets are cached for at most ``vault_secret_cache_seconds`` and never beyond the lease
  that read them, so at steady state a tool call makes no identity or KV request at all.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeVar

import hvac

from server.settings import Settings
from server.vault.client import (
    ClientLabel,
    SecretsUnavailable,
    VaultEndpoint,
    VaultRequestLog,
    VaultStartupError,
    call,
    call_async,
    close_client,
    make_client,
)
from server.vault.jwt_login import JwtFileLogin
from server.vault.settings_source import SecretReader

log = logging.getLogger(__name__)

T = TypeVar("T")

REFRESH_FRACTION: Final = 2 / 3
SERVER: Final = "server"
SETTINGS_IDENTITY: Final = "settings"


@dataclass
class Lease:
    """A token and what we know of its lifetime. The token never appears in ``repr``."""

    token: str = field(repr=False)
    ttl: float  # seconds; math.inf for a token that does not expire
    issued_at: float  # time.monotonic() taken before the request that created the token
    renewable: bool
    policies: tuple[str, ...]
    generation: int
    parent_expires_at: float = math.inf

    @property
    def expires_at(self) -> float:
        return min(self.issued_at + self.ttl, self.parent_expires_at)

    @property
    def margin(self) -> float:
        """Time kept between the last use of a token and its expiry: room for a slow request
        or a stalled process (at least 1 s, at most 5 s)."""
        return 0.0 if math.isinf(self.ttl) else min(max(self.ttl * 0.2, 1.0), 5.0)

    @property
    def usable_until(self) -> float:
        return self.expires_at - self.margin

    @property
    def refresh_at(self) -> float:
        return min(self.issued_at + self.ttl * REFRESH_FRACTION, self.usable_until)


def lease_from_auth(
    auth: Mapping[str, Any], *, issued_at: float, generation: int, parent_expires_at: float
) -> Lease:
    ttl = float(auth.get("lease_duration") or 0)
    return Lease(
        token=str(auth["client_token"]),
        ttl=ttl if ttl > 0 else math.inf,
        issued_at=issued_at,
        renewable=bool(auth.get("renewable")),
        policies=tuple(auth.get("token_policies") or auth.get("policies") or ()),
        generation=generation,
        parent_expires_at=parent_expires_at,
    )


@dataclass(frozen=True)
class VaultFacts:
    """What the server learned about Vault and its own token at startup (no secrets)."""

    address: str
    storage_type: str
    server_policies: tuple[str, ...]
    server_token_expires: bool

    @property
    def dev_server(self) -> bool:
        # A dev-mode server keeps everything in memory; production storage is raft or a database.
        return self.storage_type == "inmem"


# --- the bootstrap credential --------------------------------------------------------------------


class ServerLogin(Protocol):
    path: str  # the Vault path of the login, for spans and logs

    def login(self, unauthenticated: hvac.Client, client_for: Callable[[str], hvac.Client]) -> Any:
        """Return the ``auth`` block of a login (client_token, lease_duration, renewable, ...)."""
        ...


class AppRoleLogin:
    """Role id from a file; secret id from a response-wrapped token in a file, unwrapped once.

    The unwrapped secret id stays in memory only, for re-login when the token reaches its max TTL.
    The wrapping token is checked before use: it must have been created for this role's secret-id
    endpoint (a token wrapping anything else was tampered with), and it works once (a second
    unwrap fails, so interception is detectable).
    """

    def __init__(self, *, role_id_file: Path, wrapped_secret_id_file: Path, mount: str, role: str):
        self.role_id_file = role_id_file
        self.wrapped_secret_id_file = wrapped_secret_id_file
        self.mount = mount
        self.role = role
        self.path = f"auth/{mount}/login"
        self._role_id: str | None = None
        self._secret_id: str | None = None

    def __repr__(self) -> str:
        return f"AppRoleLogin(role={self.role!r}, mount={self.mount!r})"

    @classmethod
    def from_credential(
        cls, role_id: str, secret_id: str, *, mount: str, role: str
    ) -> AppRoleLogin:
        """A login with a secret id unwrapped elsewhere (a worker process's supervisor)."""
        login = cls(
            role_id_file=Path("/nonexistent"),
            wrapped_secret_id_file=Path("/nonexistent"),
            mount=mount,
            role=role,
        )
        login._role_id, login._secret_id = role_id, secret_id
        return login

    def credential(
        self, unauthenticated: hvac.Client, client_for: Callable[[str], hvac.Client]
    ) -> tuple[str, str]:
        """Role id and secret id, unwrapping the secret id (once) if not done yet."""
        if self._secret_id is None or self._role_id is None:
            self._role_id, self._secret_id = self._unwrap(unauthenticated, client_for)
        return self._role_id, self._secret_id

    def login(self, unauthenticated: hvac.Client, client_for: Callable[[str], hvac.Client]) -> Any:
        role_id, secret_id = self.credential(unauthenticated, client_for)
        response = unauthenticated.auth.approle.login(
            role_id=role_id,
            secret_id=secret_id,
            use_token=False,
            mount_point=self.mount,
        )
        return response["auth"]

    def _unwrap(
        self, unauthenticated: hvac.Client, client_for: Callable[[str], hvac.Client]
    ) -> tuple[str, str]:
        try:
            role_id = self.role_id_file.read_text().strip()
            wrapping_token = self.wrapped_secret_id_file.read_text().strip()
        except OSError:
            raise VaultStartupError(
                f"no bootstrap credential in {self.role_id_file} / {self.wrapped_secret_id_file}: "
                "deliver one with `python -m server vault-bootstrap` (make dev does)"
            ) from None
        lookup = unauthenticated.adapter.post(
            "/v1/sys/wrapping/lookup", json={"token": wrapping_token}
        )
        expected = f"auth/{self.mount}/role/{self.role}/secret-id"
        if lookup["data"]["creation_path"] != expected:
            self.wrapped_secret_id_file.unlink(missing_ok=True)
            raise VaultStartupError(
                "the wrapped secret id was not created for this server's AppRole: refusing it"
            )
        unwrapper = client_for(wrapping_token)
        try:
            secret_id = str(unwrapper.sys.unwrap()["data"]["secret_id"])
        finally:
            close_client(unwrapper)
        # Single use and now spent: nothing on disk is worth stealing any more.
        self.wrapped_secret_id_file.unlink(missing_ok=True)
        return role_id, secret_id


class TokenFileLogin:
    """A token written by an agent (e.g. an agent's file sink); re-read on every login."""

    def __init__(self, token_file: Path) -> None:
        self.token_file = token_file
        self.path = "auth/token/lookup-self"

    def __repr__(self) -> str:
        return f"TokenFileLogin({self.token_file})"

    def login(self, unauthenticated: hvac.Client, client_for: Callable[[str], hvac.Client]) -> Any:
        try:
            token = self.token_file.read_text().strip()
        except OSError:
            raise VaultStartupError(f"cannot read the Vault token file {self.token_file}") from None
        client = client_for(token)
        try:
            data = client.auth.token.lookup_self()["data"]
        finally:
            close_client(client)
        return {
            "client_token": token,
            "lease_duration": data.get("ttl") or 0,
            "renewable": data.get("renewable", False),
            "policies": data.get("policies") or [],
        }


def server_login_from(settings: Settings) -> ServerLogin:
    if settings.vault_login == "jwt":
        return JwtFileLogin(
            jwt_file=settings.vault_jwt_file,
            mount=settings.vault_jwt_mount,
            role=settings.vault_jwt_role,
        )
    if settings.vault_login == "token_file":
        assert settings.vault_token_file is not None  # settings validate this
        return TokenFileLogin(settings.vault_token_file)
    return AppRoleLogin(
        role_id_file=settings.vault_role_id_file,
        wrapped_secret_id_file=settings.vault_wrapped_secret_id_file,
        mount=settings.vault_approle_mount,
        role=settings.vault_approle_role,
    )


def endpoint_from(settings: Settings) -> VaultEndpoint:
    verify: bool | str = settings.vault_tls_verify
    if settings.vault_tls_verify and settings.vault_ca_file is not None:
        verify = str(settings.vault_ca_file)
    return VaultEndpoint(settings.vault_address, settings.vault_timeout_seconds, verify)


# --- leases held by the server -------------------------------------------------------------------


@dataclass
class Held:
    lease: Lease
    client: hvac.Client


STARTUP_MESSAGES: Final = {
    "sealed": "Vault at {address} is sealed",
    "unreachable": "Vault at {address} is unreachable",
    "timeout": "Vault at {address} did not answer in time",
    "forbidden": "Vault at {address} refused the server's credential or a token role (403)",
    "not_found": "Vault at {address} lacks a path the server needs (404): run the bootstrap",
    "invalid": "Vault at {address} rejected the server's login (expired or reused credential)",
    "vault_error": "Vault at {address} answered with an error",
}


class Identities:
    """Owns the server's token and the child token of every identity; opened by the Runtime."""

    def __init__(
        self,
        settings: Settings,
        tool_identities: Sequence[str] = (),
        *,
        login: ServerLogin | None = None,
        requests_log: VaultRequestLog | None = None,
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint_from(settings)
        self.login_method = login or server_login_from(settings)
        self.requests_log = requests_log or VaultRequestLog()
        self.names = (SETTINGS_IDENTITY, *tool_identities)
        self.facts: VaultFacts | None = None
        self._generation = 0
        self._server: Held | None = None
        self._children: dict[str, Held] = {}
        self._server_lock = asyncio.Lock()
        self._locks = {name: asyncio.Lock() for name in self.names}
        self._tools: dict[str, ToolIdentity] = {}
        self._unauthenticated = self._client(None, ClientLabel("unauthenticated"))

    def _client(self, token: str | None, label: ClientLabel) -> hvac.Client:
        return make_client(self.endpoint, token, label=label, requests_log=self.requests_log)

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> VaultFacts:
        """Log in and mint every identity once. Any failure: VaultStartupError, no fallback."""
        address = self.settings.vault_address
        try:
            status = await call_async(
                "seal-status", "sys/seal-status", SERVER, self._unauthenticated.sys.read_seal_status
            )
            if status.get("sealed", True):
                raise SecretsUnavailable("sealed", path="sys/seal-status", identity=SERVER)
            server = await self._server_lease()
            for name in self.names:
                await self._child(name)
        except SecretsUnavailable as failure:
            message = STARTUP_MESSAGES[failure.reason].format(address=address)
            raise VaultStartupError(
                f"{message}: the server will not start without its secrets (no fallback)"
            ) from None
        self.facts = VaultFacts(
            address=address,
            storage_type=str(status.get("storage_type", "")),
            server_policies=server.lease.policies,
            server_token_expires=not math.isinf(server.lease.ttl),
        )
        return self.facts

    async def close(self) -> None:
        """Revoke the server's token, which revokes every child token with it."""
        held, self._server = self._server, None
        if held is not None and not math.isinf(held.lease.ttl):
            try:
                revoke = held.client.auth.token.revoke_self
                await call_async("revoke-self", "auth/token/revoke-self", SERVER, revoke)
            except SecretsUnavailable:
                log.warning("could not revoke the server's Vault token; it expires on its own")
        for child in self._children.values():
            close_client(child.client)
        self._children.clear()
        if held is not None:
            close_client(held.client)
        close_client(self._unauthenticated)

    async def usable(self) -> bool:
        """Every identity holds a token it may use now (for readiness).

        Makes a Vault request only for a token that is due to be re-minted; a token that cannot
        be re-minted still counts while it is usable.
        """
        for name in self.names:
            try:
                held = await self._child(name)
            except SecretsUnavailable:
                return False
            if time.monotonic() >= held.lease.usable_until:
                return False
        return True

    # --- what tools and settings get -------------------------------------------------------------

    def tool(self, name: str) -> ToolIdentity:
        if name not in self.names or name == SETTINGS_IDENTITY:
            raise LookupError(f"no Vault identity {name!r} is configured for tools")
        if name not in self._tools:
            self._tools[name] = ToolIdentity(name, self)
        return self._tools[name]

    async def settings_reader(self) -> SecretReader:
        """A reader for the settings source, bound to a fresh lease of the settings identity."""
        held = await self._child(SETTINGS_IDENTITY)
        mount = self.settings.vault_kv_mount

        def read(path: str) -> Mapping[str, Any] | None:
            try:
                response = call(
                    "read",
                    f"{mount}/data/{path}",
                    SETTINGS_IDENTITY,
                    lambda: held.client.secrets.kv.v2.read_secret_version(
                        path=path, mount_point=mount, raise_on_deleted_version=True
                    ),
                )
            except SecretsUnavailable as failure:
                if failure.reason == "not_found":
                    return None
                raise
            return dict(response["data"]["data"])

        return read

    async def use(
        self, name: str, operation: str, path: str, fn: Callable[[hvac.Client], T]
    ) -> tuple[T, Lease]:
        """Run ``fn`` with identity ``name``'s client; returns the result and the lease used."""
        held = await self._child(name)
        try:
            return await call_async(operation, path, name, lambda: fn(held.client)), held.lease
        except SecretsUnavailable as failure:
            if failure.reason != "forbidden":
                raise
        # 403: a denial, or a token Vault no longer accepts (expired early, revoked, parent gone).
        # Re-mint once and retry; a second 403 is a denial.
        await self._forget(name, held)
        held = await self._child(name)
        return await call_async(operation, path, name, lambda: fn(held.client)), held.lease

    # --- the server's own token ------------------------------------------------------------------

    async def _server_lease(self, *, force_login: bool = False) -> Held:
        async with self._server_lock:
            held, now = self._server, time.monotonic()
            if held is not None and not force_login:
                if now < held.lease.refresh_at:
                    return held
                if held.lease.renewable and now < held.lease.usable_until:
                    renewed = await self._renew(held)
                    if renewed is not None:
                        return renewed
            return await self._login()

    async def _login(self) -> Held:
        issued_at = time.monotonic()
        auth = await call_async(
            "login",
            self.login_method.path,
            SERVER,
            lambda: self.login_method.login(
                self._unauthenticated, lambda t: self._client(t, ClientLabel("unwrap"))
            ),
        )
        self._generation += 1
        lease = lease_from_auth(
            auth, issued_at=issued_at, generation=self._generation, parent_expires_at=math.inf
        )
        label = ClientLabel(SERVER, lease.generation, lease.expires_at)
        self._server = Held(lease, self._client(lease.token, label))
        log.info("Vault: server logged in (generation %d, ttl %.0fs)", lease.generation, lease.ttl)
        return self._server

    async def _renew(self, held: Held) -> Held | None:
        """Renew the server's token; None when it cannot be renewed long enough to be useful."""
        issued_at = time.monotonic()
        try:
            response = await call_async(
                "renew-self",
                "auth/token/renew-self",
                SERVER,
                lambda: held.client.auth.token.renew_self(increment=f"{int(held.lease.ttl)}s"),
            )
        except SecretsUnavailable as failure:
            if failure.reason in ("forbidden", "invalid"):
                return None  # expired or revoked: log in again
            raise
        ttl = float(response["auth"]["lease_duration"])
        if ttl < self.settings.vault_tool_token_ttl_seconds * 2:
            return None  # capped by its max TTL: a fresh login gives children their full TTL
        lease = Lease(
            token=held.lease.token,
            ttl=ttl,
            issued_at=issued_at,
            renewable=True,
            policies=held.lease.policies,
            generation=held.lease.generation,
        )
        # A new client for the same token, so the request log shows the renewed expiry.
        label = ClientLabel(SERVER, lease.generation, lease.expires_at)
        self._server = held = Held(lease, self._client(lease.token, label))
        log.info("Vault: server token renewed (generation %d)", held.lease.generation)
        return held

    # --- child tokens ----------------------------------------------------------------------------

    async def _child(self, name: str) -> Held:
        async with self._locks[name]:
            held, now = self._children.get(name), time.monotonic()
            if held is not None and now < held.lease.refresh_at:
                return held
            try:
                fresh = await self._mint(name)
            except SecretsUnavailable:
                if held is not None and time.monotonic() < held.lease.usable_until:
                    log.warning("Vault: re-minting %s failed; its token is still valid", name)
                    return held
                raise
            self._children[name] = fresh
            return fresh

    async def _mint(self, name: str) -> Held:
        role = f"{self.settings.vault_role_prefix}{name}"
        ttl = f"{self.settings.vault_tool_token_ttl_seconds}s"

        async def mint(server: Held) -> tuple[Any, float]:
            issued_at = time.monotonic()
            response = await call_async(
                "mint",
                f"auth/token/create/{role}",
                SERVER,
                lambda: server.client.auth.token.create(
                    role_name=role, ttl=ttl, display_name=name, meta={"identity": name}
                ),
            )
            return response["auth"], issued_at

        server = await self._server_lease()
        try:
            auth, issued_at = await mint(server)
        except SecretsUnavailable as failure:
            if failure.reason != "forbidden":
                raise
            # The server's own token may have expired or been revoked: log in once, then retry.
            server = await self._server_lease(force_login=True)
            auth, issued_at = await mint(server)
        self._generation += 1
        lease = lease_from_auth(
            auth,
            issued_at=issued_at,
            generation=self._generation,
            parent_expires_at=server.lease.expires_at,
        )
        label = ClientLabel(name, lease.generation, lease.expires_at)
        log.info(
            "Vault: minted identity %s (generation %d, ttl %.0fs)",
            name,
            lease.generation,
            lease.ttl,
        )
        return Held(lease, self._client(lease.token, label))

    async def _forget(self, name: str, held: Held) -> None:
        async with self._locks[name]:
            if self._children.get(name) is held:
                del self._children[name]


# --- what a tool receives ------------------------------------------------------------------------


@dataclass(frozen=True)
class KvSecret:
    """A KV v2 secret: its data (hidden from repr) and its version (e.g. to name a key)."""

    data: Mapping[str, str] = field(repr=False)
    version: int


@dataclass
class _Cached:
    secret: KvSecret
    until: float


class ToolIdentity:
    """One tool's Vault identity: the operations it may ask for, never the token behind them.

    Vault's policies decide what succeeds: asking for another tool's path or key is sent to Vault
    and refused there (403 -> SecretsUnavailable "forbidden").
    """

    def __init__(self, name: str, identities: Identities) -> None:
        self.name = name
        self._identities = identities
        self._cache: dict[str, _Cached] = {}
        # One Vault read per expired entry, however many calls want it at that moment.
        self._refill = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ToolIdentity({self.name!r})"

    async def read_secret(self, path: str) -> KvSecret:
        """The KV v2 secret at ``path`` (relative to the KV mount), cached within its lease."""
        cached = self._cache.get(path)
        if cached is not None and time.monotonic() < cached.until:
            return cached.secret
        async with self._refill:
            cached = self._cache.get(path)
            if cached is not None and time.monotonic() < cached.until:
                return cached.secret
            return await self._read_secret(path)

    async def _read_secret(self, path: str) -> KvSecret:
        started = time.monotonic()
        mount = self._identities.settings.vault_kv_mount
        response, lease = await self._identities.use(
            self.name,
            "read",
            f"{mount}/data/{path}",
            lambda client: client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=True
            ),
        )
        secret = KvSecret(
            data=MappingProxyType(dict(response["data"]["data"])),
            version=int(response["data"]["metadata"]["version"]),
        )
        limit = started + self._identities.settings.vault_secret_cache_seconds
        self._cache[path] = _Cached(secret, min(limit, lease.usable_until))
        return secret

    async def encrypt(self, key: str, plaintexts: Sequence[str]) -> list[str]:
        """Transit-encrypt each text with ``key``; returns ``vault:v<n>:...`` ciphertexts."""
        batch = [{"plaintext": base64.b64encode(p.encode()).decode()} for p in plaintexts]
        results = await self._transit("encrypt", key, batch)
        return [str(r["ciphertext"]) for r in results]

    async def decrypt(self, key: str, ciphertexts: Sequence[str]) -> list[str]:
        """Transit-decrypt each ciphertext with ``key``."""
        batch = [{"ciphertext": c} for c in ciphertexts]
        results = await self._transit("decrypt", key, batch)
        return [base64.b64decode(r["plaintext"]).decode() for r in results]

    async def _transit(
        self, operation: str, key: str, batch: list[dict[str, str]]
    ) -> list[dict[str, Any]]:
        if not batch:
            return []
        mount = self._identities.settings.vault_transit_mount
        path = f"{mount}/{operation}/{key}"

        def run(client: hvac.Client) -> Any:
            transit = client.secrets.transit
            method = transit.encrypt_data if operation == "encrypt" else transit.decrypt_data
            return method(name=key, batch_input=batch, mount_point=mount)

        response, _ = await self._identities.use(self.name, operation, path, run)
        results = list(response["data"]["batch_results"])
        if len(results) != len(batch) or any(r.get("error") for r in results):
            log.warning("vault %s on %s as %s: item errors in a batch", operation, path, self.name)
            raise SecretsUnavailable("invalid", path=path, identity=self.name)
        return results
