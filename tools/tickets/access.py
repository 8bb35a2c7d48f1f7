"""A ticket and the caller's right to it: load-and-decide, and one authorized change.

A ticket the caller may not view is reported exactly like a ticket that does not exist, and
takes the same path (``RecordAccess.load``). The record decision is made inside the transaction
that writes, on the row as read there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from server.capability import Principal, RecordAccess, RecordNotFound, Store, ToolIdentity
from tools.tickets.models import TICKET, Ticket, TicketOut
from tools.tickets.notifications import queue_notification, signing_key


def not_found(ticket_id: int) -> RecordNotFound:
    return RecordNotFound(f"Ticket {ticket_id} not found.")


async def authorized(
    session: AsyncSession, access: RecordAccess, ticket_id: int, action: str, doing: str
) -> Ticket:
    """Load the ticket and require ``action`` on it; forbidden and missing look the same."""
    ticket, _ = await access.load(
        session, TICKET, ticket_id, action, not_found=not_found(ticket_id), doing=doing
    )
    return ticket


@dataclass(frozen=True)
class Change:
    """One authorized change of a ticket: the record decision, the change and its signed
    notification, in one transaction (all or nothing)."""

    store: Store
    access: RecordAccess
    identity: ToolIdentity
    caller: Principal

    async def __call__(
        self, ticket_id: int, action: str, event: str, apply: Callable[[Ticket], None]
    ) -> TicketOut:
        key = await signing_key(self.identity)  # before the transaction: Vault never holds a lock
        async with self.store.transaction() as session:
            ticket = await authorized(
                session, self.access, ticket_id, action, f"{action} ticket {ticket_id}"
            )
            apply(ticket)
            queue_notification(session, key, ticket, event, self.caller.id)
            await session.flush()
            return TicketOut.of(ticket)
