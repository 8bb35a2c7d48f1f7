"""Customer accounts: plans, refunds and suspensions, owned by the finance department.

Beyond the tool gate, every account is checked against ``policies/account.yaml``: who may see it
(``list_accounts`` returns only those rows), who sees its contact details unmasked
(``view_pii``), and who may change it or move money. A refund above the caller's limit runs only
after a human confirms it, when the policy says so. Contact details are stored encrypted with a
transit key only this capability's Vault identity may use.
"""

from server.capability import Capability, VaultNeeds
from tools.accounts import pii
from tools.accounts.changes import delete_account, suspend_account, update_plan
from tools.accounts.models import ACCOUNT, Account, Refund
from tools.accounts.prompts import refund_review
from tools.accounts.queries import account_resource, get_account, list_accounts
from tools.accounts.refunds import issue_refund
from tools.accounts.seed import demo_accounts

CAPABILITY = Capability(
    name="accounts",
    instructions=(
        "Customer accounts: plans, balances and refunds; contact details are personal data "
        "and stay masked unless you may see them."
    ),
    tools=[
        list_accounts,
        get_account,
        update_plan,
        issue_refund,
        suspend_account,
        delete_account,
    ],
    resources=[account_resource],
    prompts=[refund_review],
    examples={
        "list_accounts": {"plan": "pro"},
        "get_account": {"account_id": 2},
        "update_plan": {"account_id": 3, "plan": "enterprise"},
        "issue_refund": {"account_id": 2, "amount": "25.50", "reason": "Goodwill gesture"},
        "suspend_account": {"account_id": 5, "reason": "Chargeback fraud"},
        "delete_account": {"account_id": 5},
    },
    models=[Account, Refund],
    seed=demo_accounts,
    records=[ACCOUNT],
    vault=VaultNeeds(identity=pii.IDENTITY, transit_keys={pii.KEY: "aes256-gcm96"}),
)
