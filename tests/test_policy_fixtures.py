"""The policy suites test the real thing: their fixtures equal the demo principals and the
components exactly as the server presents them to the PDP."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from fastmcp import FastMCP

from server.app import create_server
from server.authz import components
from server.dev_issuer import demo_principals
from server.principal import principal_from_claims
from server.settings import Settings
from tests.support import POLICY_TESTS
from tools import accounts, tickets

FIXTURES = POLICY_TESTS / "testdata"


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((FIXTURES / name).read_text()))


def test_policy_principals_are_the_demo_principals() -> None:
    fixtures = load("principals.yaml")["principals"]
    for name, claims in demo_principals().items():
        principal = principal_from_claims({"sub": name, **claims})
        assert fixtures[name] == {
            "id": principal.id,
            "roles": list(principal.roles),
            "attr": principal.policy_attributes(),
        }, name


async def registered_components(mcp: FastMCP[Any]) -> dict[str, Any]:
    refs = [components.tool_resource(t) for t in await mcp.list_tools(run_middleware=False)]
    refs += [
        components.resource_resource(t)
        for t in await mcp.list_resource_templates(run_middleware=False)
    ]
    refs += [
        components.resource_resource(r) for r in await mcp.list_resources(run_middleware=False)
    ]
    refs += [components.prompt_resource(p) for p in await mcp.list_prompts(run_middleware=False)]
    return {(r.kind, r.id): dict(r.attributes) for r in refs}


async def test_policy_resources_are_the_registered_components() -> None:
    mcp = create_server(Settings(transport="stdio"))
    served = await registered_components(mcp)
    fixtures = {
        (r["kind"], r["id"]): r["attr"]
        for r in load("resources.yaml")["resources"].values()
        if r["kind"].startswith("mcp_") and r["attr"]["department"] != components.UNREGISTERED
    }
    assert fixtures == served


def test_record_fixtures_carry_exactly_the_attributes_the_tools_send() -> None:
    sent = {
        tickets.POLICY_KIND: set(tickets.POLICY_COLUMNS),
        accounts.POLICY_KIND: {*accounts.POLICY_COLUMNS, "refund_amount"},
    }
    records = [r for r in load("resources.yaml")["resources"].values() if r["kind"] in sent]
    assert {r["kind"] for r in records} == set(sent)
    for record in records:
        assert set(record["attr"]) == sent[record["kind"]], record["id"]


async def test_every_component_declares_policy_metadata() -> None:
    mcp = create_server(Settings(transport="stdio"))
    components.require_policy_metadata(
        components.ResourceRef(kind, ident, attrs)
        for (kind, ident), attrs in (await registered_components(mcp)).items()
    )


def test_a_component_without_policy_metadata_is_refused() -> None:
    ref = components.ResourceRef(
        "mcp_tool", "new_tool", {"department": None, "sensitivity": "secret"}
    )
    with pytest.raises(components.MissingPolicyMetadata, match="department") as refused:
        components.require_policy_metadata([ref])
    assert "sensitivity" in str(refused.value)
