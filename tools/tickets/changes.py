"""Changing tickets: open, update, assign, close and delete.

Each change is decided on the ticket as read inside the transaction that writes it, and is
announced by a signed notification in the same transaction (all or nothing).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from server.capability import (
    DESTRUCTIVE,
    WRITES,
    Deleted,
    ExpectedToolError,
    NotPermitted,
    Principal,
    RecordAccess,
    Store,
    ToolIdentity,
    get_principal,
    get_record_access,
    get_store,
    tool_identity,
)
from tools.tickets.access import Change, authorized
from tools.tickets.models import (
    DEPARTMENT,
    TICKET,
    Category,
    Priority,
    Team,
    Ticket,
    TicketId,
    TicketOut,
)
from tools.tickets.notifications import IDENTITY, queue_notification, signing_key

TAGS = {"tickets"}
META = {"department": DEPARTMENT, "sensitivity": "internal"}


@tool(tags=TAGS | {"self_service"}, meta=META, annotations=WRITES)
async def create_ticket(
    title: Annotated[
        str, Field(description="One-line summary of the problem.", min_length=3, max_length=200)
    ],
    description: Annotated[
        str, Field(description="What happened, steps to reproduce, impact.", max_length=10_000)
    ] = "",
    priority: Annotated[
        Priority, Field(description="How urgent the customer impact is.")
    ] = "normal",
    team: Annotated[
        Team, Field(description="Queue to file the ticket in: tier1 (first line) or tier2.")
    ] = "tier1",
    category: Annotated[Category, Field(description="What the problem is about.")] = "technical",
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
    caller: Principal = Depends(get_principal),
    identity: ToolIdentity = Depends(tool_identity(IDENTITY)),
) -> TicketOut:
    """Open a new support ticket. The creator is recorded as the caller."""
    ticket = Ticket(
        title=title,
        description=description,
        priority=priority,
        team=team,
        category=category,
        department=DEPARTMENT,
        status="open",
        assignee="",
        created_by=caller.id,
    )
    decision = await access.decide(
        [TICKET.resource(ticket, "new")], ("create",), must_allow=("create",)
    )
    if not decision[0].allowed("create"):
        raise NotPermitted(
            f"You may not file a {priority} ticket in the {team} queue. Nothing was created."
        )
    key = await signing_key(identity)  # Vault before the write: a failure changes nothing
    async with store.transaction() as session:
        session.add(ticket)
        await session.flush()
        queue_notification(session, key, ticket, "created", caller.id)
        return TicketOut.of(ticket)


@tool(tags=TAGS, meta=META, annotations=WRITES)
async def update_ticket(
    ticket_id: TicketId,
    title: Annotated[
        str | None, Field(description="New summary.", min_length=3, max_length=200)
    ] = None,
    description: Annotated[
        str | None, Field(description="New description.", max_length=10_000)
    ] = None,
    priority: Annotated[Priority | None, Field(description="New priority.")] = None,
    status: Annotated[
        Literal["open", "in_progress"] | None,
        Field(description="New status; use close_ticket to close."),
    ] = None,
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
    identity: ToolIdentity = Depends(tool_identity(IDENTITY)),
    caller: Principal = Depends(get_principal),
) -> TicketOut:
    """Change a ticket's title, description, priority or status; omitted fields stay."""
    fields = {"title": title, "description": description, "priority": priority, "status": status}
    changes = {k: v for k, v in fields.items() if v is not None}
    if not changes:
        raise ExpectedToolError("Nothing to update: give at least one field to change.")

    def apply(ticket: Ticket) -> None:
        for field, value in changes.items():
            setattr(ticket, field, value)

    change = Change(store, access, identity, caller)
    return await change(ticket_id, "update", "updated", apply)


@tool(tags=TAGS, meta=META, annotations=WRITES)
async def assign_ticket(
    ticket_id: TicketId,
    assignee: Annotated[
        str,
        Field(
            description="User id of the agent who should own the ticket.",
            pattern=r"^[A-Za-z0-9._@-]{1,128}$",
        ),
    ],
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
    identity: ToolIdentity = Depends(tool_identity(IDENTITY)),
    caller: Principal = Depends(get_principal),
) -> TicketOut:
    """Assign a ticket to an agent and mark it in progress."""

    def apply(ticket: Ticket) -> None:
        ticket.assignee = assignee
        ticket.status = "in_progress"

    change = Change(store, access, identity, caller)
    return await change(ticket_id, "assign", "assigned", apply)


@tool(tags=TAGS, meta=META, annotations=WRITES)
async def close_ticket(
    ticket_id: TicketId,
    resolution: Annotated[
        str,
        Field(
            description="How the problem was solved, for the customer and the record.",
            min_length=3,
            max_length=5_000,
        ),
    ],
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
    identity: ToolIdentity = Depends(tool_identity(IDENTITY)),
    caller: Principal = Depends(get_principal),
) -> TicketOut:
    """Close a ticket with a resolution note."""

    def apply(ticket: Ticket) -> None:
        ticket.status = "closed"
        ticket.resolution = resolution

    change = Change(store, access, identity, caller)
    return await change(ticket_id, "close", "closed", apply)


@tool(tags=TAGS, meta=META, annotations=DESTRUCTIVE)
async def delete_ticket(
    ticket_id: TicketId,
    store: Store = Depends(get_store),
    access: RecordAccess = Depends(get_record_access),
    identity: ToolIdentity = Depends(tool_identity(IDENTITY)),
    caller: Principal = Depends(get_principal),
) -> Deleted:
    """Permanently delete a ticket. This cannot be undone; prefer close_ticket."""
    key = await signing_key(identity)
    async with store.transaction() as session:
        ticket = await authorized(
            session, access, ticket_id, "delete", f"delete ticket {ticket_id}"
        )
        queue_notification(session, key, ticket, "deleted", caller.id)
        await session.delete(ticket)
    return Deleted(id=ticket_id)
