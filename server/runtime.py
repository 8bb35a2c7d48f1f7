"""The long-lived services of one server instance, opened and closed by its lifespan.

Built (without I/O) by ``create_server``; connections are opened inside the running event loop,
because the async gRPC channel binds to the loop that creates it. Telemetry starts first and
closes last, so the PDP channel's first RPC and the shutdown's last spans are exported too.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.authz.pdp import PolicyDecisionPoint
from server.settings import Settings
from server.store import Store
from server.telemetry import Telemetry


@dataclass
class Runtime:
    settings: Settings
    store: Store
    pdp: PolicyDecisionPoint
    telemetry: Telemetry

    async def start(self) -> None:
        self.telemetry.start()
        await self.pdp.start()
        await self.store.start(seed=self.settings.seed_demo_data)

    async def close(self) -> None:
        await self.store.close()
        await self.pdp.close()
        await self.telemetry.close()
