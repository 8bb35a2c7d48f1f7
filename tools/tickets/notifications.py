"""Signed notifications of ticket changes, written to the outbox in the change's transaction.

The signing key is read from these tools' own Vault path through their own Vault identity
(cached within the identity's lease). Tools fetch it before they open a transaction: if Vault
cannot provide it, the call fails closed and nothing is written, and Vault never holds a lock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

from server.capability import KvSecret, ToolIdentity
from tools.tickets.models import Outbox, Ticket

IDENTITY: Final = "tickets"
SIGNING_KEY_PATH: Final = "tools/tickets/notifications"


async def signing_key(identity: ToolIdentity) -> KvSecret:
    return await identity.read_secret(SIGNING_KEY_PATH)


def sign(key: KvSecret, payload: str) -> str:
    secret = key.data["signing_key"].encode()
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def queue_notification(
    session: AsyncSession, key: KvSecret, ticket: Ticket, event: str, actor: str
) -> None:
    """Add the signed notification of ``event`` to the outbox, in the caller's transaction.

    The payload names what changed and who did it; no customer text (title, description).
    """
    topic = f"ticket.{event}"
    body = {
        "topic": topic,
        "ticket_id": ticket.id,
        "team": ticket.team,
        "status": ticket.status,
        "priority": ticket.priority,
        "assignee": ticket.assignee,
        "actor": actor,
        "at": datetime.now(UTC).isoformat(),
    }
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"))
    session.add(
        Outbox(
            topic=topic,
            subject_id=ticket.id,
            payload=payload,
            key_version=key.version,
            signature=sign(key, payload),
        )
    )
