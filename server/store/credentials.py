"""One capability's database login: short-lived credentials from Vault's database secrets engine,
obtained through that capability's own Vault identity.

On PostgreSQL every capability connects as a database user of its own, created by Vault for the
role ``<prefix><identity>`` (``database/creds/<role>``) with privileges on that capability's
tables only. The capability's Vault identity may read that one path and nothing else of the
database engine; the server's own token cannot read it at all.

Lifetimes follow the identities' rules (``server.vault.identities.Lease``): a credential is
bounded by its lease *and* by the identity token that obtained it, because Vault revokes every
lease of a token when the token expires or is revoked (its database user is dropped then). So a
credential is never renewed (that could not outlive the token anyway, and renewing would need
a grant beyond ``read``): it is re-issued once two thirds of that bounded lifetime have passed,
and never used after ``usable_until``. When re-issuing fails (Vault sealed or unreachable) the
current credential is kept while it is still usable; past that, the store fails closed.

At shutdown the server revokes its own token, which revokes every identity token it minted and
with them every database lease: the users are dropped and their passwords stop working.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import hvac

from server.vault.client import SecretsUnavailable
from server.vault.identities import Identities, Lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatabaseLogin:
    """A database user and password, and the lease they live by (``lease.token`` is the lease id).

    Neither the password nor the lease id appears in ``repr``.
    """

    username: str
    password: str = field(repr=False)
    lease: Lease


class DatabaseCredentials:
    """Issues, caches and re-issues one capability's database login."""

    def __init__(self, identities: Identities, identity: str, *, mount: str, role: str) -> None:
        self.identity = identity
        self.mount = mount
        self.role = role
        self.path = f"{mount}/creds/{role}"
        self._identities = identities
        self._held: DatabaseLogin | None = None
        self._generation = 0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"DatabaseCredentials({self.identity!r}, role={self.role!r})"

    @property
    def held(self) -> DatabaseLogin | None:
        """The login in use, if any (no Vault request)."""
        return self._held

    async def current(self) -> DatabaseLogin:
        """A login that is fresh, or still usable while a fresh one cannot be had.

        Raises ``SecretsUnavailable`` when Vault cannot issue one and none is usable.
        """
        held = self._held
        if held is not None and time.monotonic() < held.lease.refresh_at:
            return held
        async with self._lock:
            held = self._held
            if held is not None and time.monotonic() < held.lease.refresh_at:
                return held
            try:
                self._held = await self._issue()
            except SecretsUnavailable as failure:
                if held is not None and time.monotonic() < held.lease.usable_until:
                    log.warning(
                        "database login of %s could not be re-issued (%s); the current one is "
                        "still valid",
                        self.identity,
                        failure.reason,
                    )
                    return held
                raise
            return self._held

    def forget(self) -> None:
        """Drop the held login (at shutdown; Vault revokes it with the identity's token)."""
        self._held = None

    async def _issue(self) -> DatabaseLogin:
        issued_at = time.monotonic()

        def generate(client: hvac.Client) -> Any:
            return client.secrets.database.generate_credentials(
                name=self.role, mount_point=self.mount
            )

        response, token = await self._identities.use(self.identity, "read", self.path, generate)
        # The lease dies with the token that obtained it: bound its lifetime by that token's, so
        # re-issuing happens at two thirds of the life it really has.
        lease_ttl = float(response.get("lease_duration") or 0) or math.inf
        ttl = min(lease_ttl, token.expires_at - issued_at)
        self._generation += 1
        lease = Lease(
            token=str(response.get("lease_id") or ""),
            ttl=ttl,
            issued_at=issued_at,
            renewable=False,
            policies=(),
            generation=self._generation,
        )
        data = response["data"]
        log.info(
            "database login issued for %s (generation %d, valid %.0fs)",
            self.identity,
            lease.generation,
            ttl,
        )
        return DatabaseLogin(str(data["username"]), str(data["password"]), lease)
