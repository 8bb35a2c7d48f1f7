"""Demo accounts in several regions and segments, their contact details encrypted through this
capability's own Vault identity as they are written."""

from __future__ import annotations

from collections.abc import Sequence

from server.capability import SeedContext
from tools.accounts import pii
from tools.accounts.models import Account

ROWS = [
    ("Acme Corp", "enterprise", "eu", "enterprise", "billing@acme.example", "+44 20 7946 0001",
     1_250_000),
    ("Globex", "pro", "us", "smb", "ap@globex.example", "+1 555 0100", 48_000),
    ("Initech", "pro", "us", "smb", "finance@initech.example", "+1 555 0199", 12_500),
    ("Umbrella Health", "enterprise", "apac", "enterprise", "ops@umbrella.example",
     "+61 2 5550 1234", 990_000),
    ("Hooli Labs", "free", "eu", "smb", "hello@hooli.example", "+49 30 5550 7788", 0),
]  # fmt: skip


async def demo_accounts(context: SeedContext) -> Sequence[Account]:
    if context.identity is None:
        raise ValueError("demo accounts are encrypted through the accounts identity")
    contacts = await context.identity.encrypt(
        pii.KEY, [text for row in ROWS for text in (row[4], row[5])]
    )
    return [
        Account(
            name=name,
            plan=plan,
            region=region,
            segment=segment,
            email=contacts[2 * i],
            phone=contacts[2 * i + 1],
            email_masked=pii.mask_email(email),
            phone_masked=pii.mask_phone(phone),
            balance_cents=balance,
        )
        for i, (name, plan, region, segment, email, phone, balance) in enumerate(ROWS)
    ]
