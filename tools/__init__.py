"""The capabilities this server registers: one package each, and this list.

A capability owns everything about itself (tools, tables, demo rows, record policies, Vault
needs); packages never import each other. ``make new-capability name=<name>`` adds one here;
``MCP_CAPABILITIES`` names the module the server loads this list from (default ``tools``).
"""

from server.capability import Capability
from tools.accounts import CAPABILITY as ACCOUNTS
from tools.tickets import CAPABILITY as TICKETS

CAPABILITIES: tuple[Capability, ...] = (
    TICKETS,
    ACCOUNTS,
)
