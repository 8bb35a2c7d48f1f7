"""The example capabilities. One module per capability; modules never import each other.

To add one: write ``tools/<name>.py`` with a ``register(mcp)`` function, add it to
``CAPABILITIES`` and give its components policies (see README, "Add a tool").
"""

from __future__ import annotations

from collections.abc import Callable

from fastmcp import FastMCP

from tools import accounts, tickets

CAPABILITIES: tuple[Callable[[FastMCP], None], ...] = (tickets.register, accounts.register)


def register_all(mcp: FastMCP) -> None:
    for register in CAPABILITIES:
        register(mcp)
