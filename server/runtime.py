"""The long-lived services of one server instance, opened and closed by its lifespan.

Built (without I/O) by ``build_runtime``; connections are opened inside the running event loop,
because the async gRPC channel binds to the loop that creates it. Telemetry starts first and
closes last, so the PDP channel's first RPC and the shutdown's last spans are exported too.

Startup order matters: Vault first (the server's login and every capability's identity), then
the settings that come from Vault, then the production guard on what was actually obtained, and
only then the store: the registered capabilities' tables, and their demo rows where empty. Any
failure stops startup: the server never becomes ready without its secrets.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import cast

from sqlalchemy import Table

from server.authz.confirmation import ConfirmationUse
from server.authz.decision_cache import DecisionCache
from server.authz.pdp import PolicyDecisionPoint
from server.capability import registry
from server.capability.declaration import Capability, SeedContext
from server.settings import Settings
from server.store.core import Base, Store
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
    store: Store
    pdp: PolicyDecisionPoint
    identities: Identities
    telemetry: Telemetry

    async def start(self) -> None:
        self.telemetry.start()
        await self.pdp.start()
        try:
            facts = await self.identities.open()
            reader = await self.identities.settings_reader()
            # The settings source is synchronous (pydantic-settings) and does HTTP: off the loop.
            self.settings = await asyncio.to_thread(with_vault_secrets, self.settings, reader)
            production_guard.enforce(self.settings, facts)
            await self.store.start(tables=self.tables, password=self.settings.database_password)
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
        return runtime_tables(self.capabilities)

    async def _seed(self) -> None:
        """Each capability's demo rows, where all of its tables are still empty."""
        for capability in self.capabilities:
            seed = capability.seed
            if seed is None:
                continue
            identity = self.identities.tool(capability.identity) if capability.identity else None
            tables = [cast(Table, model.__table__) for model in capability.models]
            if await self.store.seed_if_empty(tables, partial(seed, SeedContext(identity))):
                log.info("seeded the demo rows of %s", capability.name)

    async def close(self) -> None:
        await self.store.close()
        await self.identities.close()
        await self.pdp.close()
        await self.telemetry.close()


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


def runtime_tables(capabilities: Sequence[Capability]) -> list[Table]:
    """The runtime's own tables and every registered capability's."""
    models: list[type[Base]] = [ConfirmationUse]
    models += [m for c in capabilities for m in c.models]
    return [cast(Table, model.__table__) for model in models]


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
    return Runtime(
        settings=settings,
        capabilities=tuple(capabilities),
        store=Store(
            settings.database_url,
            pool_size=settings.database_pool_size,
            statement_spans=settings.otel_statement_spans,
        ),
        pdp=pdp,
        identities=Identities(settings, registry.identities(capabilities), login=login),
        telemetry=Telemetry(settings),
    )
