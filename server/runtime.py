"""The long-lived services of one server instance, opened and closed by its lifespan.

Built (without I/O) by ``build_runtime``; connections are opened inside the running event loop,
because the async gRPC channel binds to the loop that creates it. Telemetry starts first and
closes last, so the PDP channel's first RPC and the shutdown's last spans are exported too.

Startup order matters: Vault first (the server's login and every identity), then the settings
that come from Vault, then the production guard on what was actually obtained, and only then the
store. Any failure stops startup: the server never becomes ready without its secrets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from server import production_guard
from server.authz.pdp import PolicyDecisionPoint
from server.identities import Identities
from server.pii import PII_IDENTITY, PII_KEY
from server.settings import Settings
from server.settings_vault import with_vault_secrets
from server.store import Store
from server.telemetry import Telemetry
from server.vault import SecretsUnavailable, VaultStartupError

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
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
            # Demo accounts' contact details are encrypted through the accounts identity.
            await self.store.start(
                seed=self.settings.seed_demo_data,
                encrypt_pii=self._encrypt_pii,
                password=self.settings.database_password,
            )
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

    async def _encrypt_pii(self, plaintexts: Sequence[str]) -> list[str]:
        return await self.identities.tool(PII_IDENTITY).encrypt(PII_KEY, plaintexts)

    async def close(self) -> None:
        await self.store.close()
        await self.identities.close()
        await self.pdp.close()
        await self.telemetry.close()


def build_runtime(settings: Settings) -> Runtime:
    pdp = PolicyDecisionPoint(
        settings.pdp_address,
        timeout_seconds=settings.pdp_timeout_seconds,
        max_resources_per_request=settings.pdp_max_resources_per_request,
        tls_ca=settings.pdp_tls_ca_file.read_bytes() if settings.pdp_tls_ca_file else None,
    )
    return Runtime(
        settings=settings,
        store=Store(settings.database_url),
        pdp=pdp,
        identities=Identities(settings),
        telemetry=Telemetry(settings),
    )
