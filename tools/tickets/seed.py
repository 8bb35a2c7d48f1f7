"""Demo tickets: two queues (tier1, tier2), some assigned to the demo agents alice and bob."""

from __future__ import annotations

from collections.abc import Sequence

from server.capability import SeedContext
from tools.tickets.models import Ticket

ROWS = [
    ("Password reset email never arrives", "tier1", "high", "account", "alice"),
    ("Cannot update billing address", "tier1", "normal", "billing", ""),
    ("Dashboard shows wrong time zone", "tier1", "low", "technical", "alice"),
    ("Export to CSV times out", "tier1", "normal", "technical", ""),
    ("Two-factor codes rejected on mobile", "tier1", "urgent", "account", ""),
    ("Invoice PDF is blank", "tier1", "normal", "billing", ""),
    ("API returns 500 on bulk import", "tier2", "urgent", "technical", "bob"),
    ("Webhook deliveries delayed by hours", "tier2", "high", "technical", "bob"),
    ("SSO login loops after IdP change", "tier2", "high", "account", ""),
    ("Charged twice for the annual plan", "tier2", "high", "billing", ""),
    ("Rate limit hit below documented quota", "tier2", "normal", "technical", ""),
    ("Audit log missing entries for May", "tier2", "normal", "technical", ""),
]


async def demo_tickets(_: SeedContext) -> Sequence[Ticket]:
    return [
        Ticket(
            title=title,
            description=f"Customer report: {title.lower()}.",
            team=team,
            priority=priority,
            category=category,
            assignee=assignee,
            status="in_progress" if assignee else "open",
            created_by="seed",
        )
        for title, team, priority, category, assignee in ROWS
    ]
