"""The long-lived services of one server instance, opened and closed by its lifespan.

Built (without I/O) by ``build_runtime``; connections are opened inside the running event loop,
because the async gRPC channel binds to the loop that creates it. Telemetry starts first and
closes last, so the PDP channel's first RPC and the shutdown's last spans are exported too.

Startup order matters: Vault first (the server's login and every capability's identity), then
the settings that come from Vault, then the production guard on what was actually obtained, and
only then the stores: on PostgreSQL each capability's store logs in with its own short-lived
database user (from Vault's database engine, through that capability's identity) and checks
that its tables are there and granted; on SQLite the one store creates the tables. Then each
capability's demo rows, where its tables are empty, written through its own store. Any failure
stops startup: the server never becomes ready without its secrets.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Table

from server.authz.decision_cache import DecisionCache
from server.authz.pdp import PolicyDecisionPoint
from server.authz.request_state import SharedKeyCodec
from server.capability import registry
from server.capability.declaration import Capability, InvalidDeclaration, SeedContext
from server.settings import Settings
from server.store.core import Store
from server.store.credentials import DatabaseCredentials
from server.store.stores import Stores, is_single_identity
from server.telemetry.setup import Telemetry
from server.vault import production_guard
from server.vault.client import SecretsUnavailable, VaultStartupError
from server.vault.identities import Identities, ServerLogin
from server.vault.settings_source import with_vault_secrets

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    capabilities: Sequence[Capability]
    stores: Stores
    pdp: PolicyDecisionPoint
    identities: Identities
    telemetry: Telemetry
    # Seals the requestState of multi-round calls; its key is read from Vault at startup.
    request_state: SharedKeyCodec

    async def start(self) -> None:
        self.telemetry.start()
        await self.pdp.start()
        try:
            facts = await self.identities.open()
            reader = await self.identities.settings_reader()
            # The settings source is synchronous (pydantic-settings) and does HTTP: off the loop.
            self.settings = await asyncio.to_thread(with_vault_secrets, self.settings, reader)
            production_guard.enforce(self.settings, facts)
            self.request_state.install([request_state_key(self.settings)])
            await self.stores.start(
                {c.name: registry.capability_tables(c) for c in self.capabilities},
                registry.shared_tables(),
            )
            if self.settings.seed_demo_data:
                await self._seed()
        except (VaultStartupError, production_guard.ProductionGuardError) as refused:
            log.error("startup refused: %s", refused)
            await self.close()
            raise
        except SecretsUnavailable as failure:
            # Reading the settings-level secrets failed (403, sealed, unreachable): fail closed.
            log.error("startup refused: settings secrets unavailable (%s)", failure.reason)
            await self.close()
            raise VaultStartupError(
                f"settings secrets unavailable from Vault ({failure.reason}): no fallback"
            ) from None
        except BaseException:
            await self.close()
            raise

    @property
    def tables(self) -> list[Table]:
        """The runtime's own tables and every registered capability's."""
        return registry.all_tables(self.capabilities)

    async def _seed(self) -> None:
        """Each capability's demo rows, where all of its tables are still empty."""
        for capability in self.capabilities:
            seed = capability.seed
            if seed is None:
                continue
            identity = self.identities.tool(capability.identity) if capability.identity else None
            tables = registry.capability_tables(capability)
            store = self.stores.of(capability.name)
            if await store.seed_if_empty(tables, partial(seed, SeedContext(identity))):
                log.info("seeded the demo rows of %s", capability.name)

    async def close(self) -> None:
        # Engines first (their connections end), then the server's token: revoking it revokes
        # every identity token it minted and, with them, every database login they obtained.
        await self.stores.close()
        await self.identities.close()
        await self.pdp.close()
        await self.telemetry.close()
        self.request_state.clear()


def request_state_key(settings: Settings) -> SecretStr:
    """The key every replica seals ``requestState`` with (``server.authz.request_state``).

    Without it a round started on one replica could not be finished on another: startup stops,
    as for any missing secret.
    """
    key = settings.request_state_key
    if key is None:
        raise VaultStartupError(
            "the request-state key is missing from Vault (settings secret request_state_key): "
            "run the bootstrap (python -m ops vault-bootstrap), which creates it"
        )
    if len(key.get_secret_value().encode()) < 32:
        raise VaultStartupError("the request-state key from Vault is shorter than 32 bytes")
    return key


def tune_garbage_collection(settings: Settings) -> None:
    """For a process that serves requests (``serve`` and each worker), before it serves.

    A request allocates thousands of short-lived objects (FastMCP, pydantic, the SDKs); with
    Python's default threshold the cyclic collector runs every 700 allocations and walks every
    young object each time: ~20 % of the CPU of a call, measured. Collecting every
    ``MCP_GC_THRESHOLD`` allocations instead, and freezing what startup created (modules,
    the app, its tools: never garbage) out of the older generations' walks, leaves reference
    counting to free almost everything, as it does anyway.
    """
    if settings.gc_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(settings.gc_threshold, max(older, 20), max(oldest, 100))


def build_runtime(
    settings: Settings,
    capabilities: Sequence[Capability] | None = None,
    *,
    login: ServerLogin | None = None,
) -> Runtime:
    """The runtime for ``capabilities`` (default: those ``settings.capabilities`` names);
    ``login``: the server's Vault login (default: from the settings)."""
    if capabilities is None:
        capabilities = registry.load(settings.capabilities)
    pdp = PolicyDecisionPoint(
        settings.pdp_address,
        timeout_seconds=settings.pdp_timeout_seconds,
        max_resources_per_request=settings.pdp_max_resources_per_request,
        tls_ca=settings.pdp_tls_ca_file.read_bytes() if settings.pdp_tls_ca_file else None,
        cache=DecisionCache(settings.authz_cache_seconds),
        decision_spans=settings.otel_decision_spans,
    )
    identities = Identities(settings, registry.identities(capabilities), login=login)
    return Runtime(
        settings=settings,
        capabilities=tuple(capabilities),
        stores=build_stores(settings, capabilities, identities),
        pdp=pdp,
        identities=identities,
        telemetry=Telemetry(settings),
        request_state=SharedKeyCodec(),
    )


def build_stores(
    settings: Settings, capabilities: Sequence[Capability], identities: Identities
) -> Stores:
    """SQLite: one store for all. PostgreSQL: one per capability that owns tables, each with
    its own database login from Vault, through the capability's own identity."""
    owning = [c for c in capabilities if c.models]
    timeout = settings.database_timeout_seconds
    pool: dict[str, Any] = {
        "pool_size": settings.database_pool_size,
        "statement_spans": settings.otel_statement_spans,
    }
    if is_single_identity(settings.database_url):
        shared = Store(settings.database_url, timeout_seconds=timeout, **pool)
        return Stores({c.name: shared for c in owning} or {"": shared})
    stores: dict[str, Store] = {}
    for capability in owning:
        if capability.identity is None:
            raise InvalidDeclaration(
                f"capability {capability.name!r} owns tables but declares no Vault identity: on "
                "PostgreSQL its database login comes through it (vault=VaultNeeds(identity=...))"
            )
        login = DatabaseCredentials(
            identities,
            capability.identity,
            mount=settings.vault_database_mount,
            role=f"{settings.vault_role_prefix}{capability.identity}",
        )
        stores[capability.name] = Store(
            settings.database_url, login=login, timeout_seconds=timeout, **pool
        )
    return Stores(stores)
