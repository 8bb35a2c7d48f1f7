"""Ticketing: a support desk's queue, owned by the support department.

Two gates guard every tool. The authorization middleware has already allowed the *tool* before
any of this code runs; each tool then asks about the *ticket* (``policies/ticket.yaml``) inside
the transaction that writes. A ticket the caller may not view is reported exactly like a ticket
that does not exist, and ``list_tickets`` returns only rows the policy lets the caller view.
Every change is announced by a notification signed with a key only this capability's Vault
identity can read.
"""

from server.capability import Capability, VaultNeeds, random_secret
from tools.tickets.changes import (
    assign_ticket,
    close_ticket,
    create_ticket,
    delete_ticket,
    update_ticket,
)
from tools.tickets.models import TICKET, Outbox, Ticket
from tools.tickets.notifications import IDENTITY, SIGNING_KEY_PATH
from tools.tickets.prompts import triage_ticket
from tools.tickets.queries import get_ticket, list_tickets, ticket_resource
from tools.tickets.seed import demo_tickets

CAPABILITY = Capability(
    name="tickets",
    instructions=(
        "Support desk: tickets in the tier1 and tier2 queues; read them with list_tickets "
        "and get_ticket before changing them."
    ),
    tools=[
        list_tickets,
        get_ticket,
        create_ticket,
        update_ticket,
        assign_ticket,
        close_ticket,
        delete_ticket,
    ],
    resources=[ticket_resource],
    prompts=[triage_ticket],
    examples={
        "list_tickets": {"status": "open", "limit": 5},
        "get_ticket": {"ticket_id": 1},
        "create_ticket": {"title": "Printer is on fire", "team": "tier1"},
        "update_ticket": {"ticket_id": 2, "priority": "high"},
        "assign_ticket": {"ticket_id": 4, "assignee": "alice"},
        "close_ticket": {"ticket_id": 3, "resolution": "Time zone set in the profile."},
        "delete_ticket": {"ticket_id": 6},
    },
    models=[Ticket, Outbox],
    seed=demo_tickets,
    records=[TICKET],
    vault=VaultNeeds(
        identity=IDENTITY,
        secrets={SIGNING_KEY_PATH: {"signing_key": random_secret}},
    ),
)
