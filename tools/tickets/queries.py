"""Reading tickets: the caller's queue (filtered in SQL by a query plan) and one ticket, as a
tool and as a resource."""

from __future__ import annotations

from typing import Annotated

from fastmcp.dependencies import Depends
from fastmcp.resources import resource
from fastmcp.tools import tool
from pydantic import Field

from server.capability import (
    READ_ONLY,
    RecordAccess,
    Store,
    get_record_access,
    get_store,
    resource_not_found,
)
from tools.tickets.access import authorized
from tools.tickets.models import (
    DEPARTMENT,
    TICKET,
    Status,
    Team,
    Ticket,
    TicketId,
    TicketList,
    TicketOut,
)

TAGS = {"tickets"}
META = {"department": DEPARTMENT, "sensitivity": "internal"}


@tool(tags=TAGS, meta=META, annotations=READ_ONLY)
async def list_tickets(
    status: Annotated[Status | None, Field(description="Only tickets in this status.")] = None,
    team: Annotated[Team | None, Field(description="Only tickets of this team's queue.")] = None,
    limit: Annotated[
        int, Field(description="Maximum number of tickets to return.", ge=1, le=100)
    ] = 25,
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
) -> TicketList:
    """List the support tickets you may see, newest first. Use filters to narrow the queue."""
    query = await access.query(Ticket, TICKET.kind, "view", TICKET.columns)
    query = query.order_by(Ticket.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Ticket.status == status)
    if team is not None:
        query = query.where(Ticket.team == team)
    async with store.transaction() as session:
        rows = (await session.scalars(query)).all()
    return TicketList(tickets=[TicketOut.of(r) for r in rows], count=len(rows))


@tool(tags=TAGS, meta=META, annotations=READ_ONLY)
async def get_ticket(
    ticket_id: TicketId,
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
) -> TicketOut:
    """Get one ticket with its full description, status and assignee."""
    async with store.transaction() as session:
        return TicketOut.of(await authorized(session, access, ticket_id, "view", "view it"))


@resource(
    "ticket://{ticket_id}",
    name="ticket",
    description="A support ticket as JSON.",
    mime_type="application/json",
    tags=TAGS,
    meta=META,
)
async def ticket_resource(
    ticket_id: str,
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
) -> str:
    # The id as written in the URI: anything but a canonical id names no ticket. A ticket the
    # caller may not view reads exactly like a URI that matches nothing, by the same path.
    missing = resource_not_found()
    async with store.transaction() as session:
        ticket, _ = await access.load(
            session, TICKET, ticket_id, "view", not_found=missing, doing="view it"
        )
        return TicketOut.of(ticket).model_dump_json()
