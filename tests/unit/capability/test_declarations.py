"""A capability's declaration is checked when it is made and when a server is built, so a
mistake stops the server at startup, by name, never at the first call."""

from __future__ import annotations

from typing import Any

import pytest
from fastmcp import FastMCP
from fastmcp.dependencies import Depends
from fastmcp.tools import tool

from server.capability import (
    READ_ONLY,
    Capability,
    InvalidDeclaration,
    ToolIdentity,
    VaultNeeds,
    registry,
    tool_identity,
)
from server.vault.identities import Identities
from tools import CAPABILITIES

META = {"department": "support", "sensitivity": "internal"}


@tool(meta=META, annotations=READ_ONLY)
async def peek(identity: ToolIdentity = Depends(tool_identity("accounts"))) -> str:
    """Uses another capability's identity."""
    return "never"


@tool(meta=META, annotations=READ_ONLY)
async def honest() -> str:
    """Uses no identity."""
    return "ok"


@tool(meta={"department": "support"}, annotations=READ_ONLY)
async def undeclared() -> str:
    """Declares no sensitivity."""
    return "ok"


def capability(**overrides: Any) -> Capability:
    values: dict[str, Any] = {
        "name": "reports",
        "instructions": "Reports.",
        "tools": [honest],
        "examples": {"honest": {}},
    }
    return Capability(**{**values, **overrides})


def test_a_tool_asking_for_another_capabilitys_identity_stops_the_server_by_name() -> None:
    reports = capability(tools=[peek], examples={"peek": {}}, vault=VaultNeeds(identity="reports"))
    with pytest.raises(
        InvalidDeclaration,
        match="'peek' of capability 'reports' asks for the Vault identity 'accounts'",
    ):
        registry.register(FastMCP("t"), [reports])


def test_a_tool_asking_for_an_identity_its_capability_does_not_declare_is_refused() -> None:
    with pytest.raises(InvalidDeclaration, match="declares no Vault identity"):
        registry.register(FastMCP("t"), [capability(tools=[peek], examples={"peek": {}})])


def test_a_tool_without_the_gate_attributes_is_refused() -> None:
    broken = capability(tools=[undeclared], examples={"undeclared": {}})
    with pytest.raises(InvalidDeclaration, match="'undeclared' of capability 'reports': meta "):
        registry.register(FastMCP("t"), [broken])


def test_every_tool_needs_example_arguments() -> None:
    with pytest.raises(InvalidDeclaration, match=r"no example arguments for \['honest'\]"):
        capability(examples={})


def test_two_capabilities_cannot_share_a_name_an_identity_or_a_tool() -> None:
    with pytest.raises(InvalidDeclaration, match="tool"):
        registry.check_all([capability(), capability(name="other")])
    with pytest.raises(InvalidDeclaration, match="Vault identity"):
        registry.check_all(
            [
                capability(vault=VaultNeeds(identity="shared")),
                capability(name="other", tools=[], examples={}, vault=VaultNeeds("shared")),
            ]
        )


def test_the_identities_to_mint_come_from_the_registered_capabilities() -> None:
    assert registry.identities(CAPABILITIES) == ("tickets", "accounts")
    assert registry.identities([capability()]) == ()


def test_an_identity_nobody_declared_is_refused_before_any_vault_request() -> None:
    from server.settings import Settings

    identities = Identities(Settings(transport="stdio"), ("tickets",))
    with pytest.raises(LookupError, match="no Vault identity 'accounts'"):
        identities.tool("accounts")


def test_the_instructions_are_composed_from_the_capabilities() -> None:
    text = registry.instructions(CAPABILITIES)
    assert text.startswith(registry.PREAMBLE)
    for registered in CAPABILITIES:
        assert registered.instructions in text
