"""The policy suites test the real thing: their principals are the demo principals, and their
record fixtures carry exactly the attributes the capabilities send. (The component fixtures are
generated from the registered components: tests/unit/ops/test_generated_files.py.)"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from fastmcp import FastMCP

from ops.dev_issuer import demo_principals
from ops.policy_suites import FIXTURES, POLICY_TESTS, ROOT, fixtures, load_yaml
from server.app import create_server
from server.authz import components
from server.authz.decisions import ResourceRef
from server.authz.records import RecordPolicy
from server.edge.principal import principal_from_claims
from server.settings import Settings
from tools import CAPABILITIES


def test_policy_principals_are_the_demo_principals() -> None:
    principals = load_yaml(FIXTURES / "principals.yaml")["principals"]
    for name, claims in demo_principals().items():
        principal = principal_from_claims({"sub": name, **claims})
        assert principals[name] == {
            "id": principal.id,
            "roles": list(principal.roles),
            "attr": principal.policy_attributes(),
        }, name


def test_record_fixtures_carry_exactly_the_attributes_the_tools_send() -> None:
    sent = {record.kind: record.attribute_names for c in CAPABILITIES for record in c.records}
    seen = set()
    for suite_file in sorted(POLICY_TESTS.glob("*_test.yaml")):
        resources, _ = fixtures(load_yaml(suite_file))
        for key, fixture in resources.items():
            if fixture["kind"] in sent:
                seen.add(fixture["kind"])
                assert set(fixture["attr"]) == sent[fixture["kind"]], f"{suite_file.name}: {key}"
    assert seen == set(sent), "every record kind has fixtures in some suite"


async def registered_refs(mcp: FastMCP[Any]) -> list[ResourceRef]:
    refs = [components.tool_resource(t) for t in await mcp.list_tools(run_middleware=False)]
    refs += [
        components.resource_resource(t)
        for t in await mcp.list_resource_templates(run_middleware=False)
    ]
    refs += [components.prompt_resource(p) for p in await mcp.list_prompts(run_middleware=False)]
    return refs


async def test_every_component_declares_policy_metadata() -> None:
    mcp = create_server(Settings(transport="stdio"))
    components.require_policy_metadata(await registered_refs(mcp))


def test_a_component_without_policy_metadata_is_refused() -> None:
    ref = ResourceRef("mcp_tool", "new_tool", {"department": None, "sensitivity": "secret"})
    with pytest.raises(components.MissingPolicyMetadata, match="department") as refused:
        components.require_policy_metadata([ref])
    assert "sensitivity" in str(refused.value)


def test_every_record_placeholder_is_valid_for_its_kinds_schema() -> None:
    """A missing record is asked about as its kind's placeholder: with the schema enforced, an
    invalid one would make the PDP answer differently (validation errors) than for a real row."""
    schemas = ROOT / "policies" / "_schemas"
    for capability in CAPABILITIES:
        for record in capability.records:
            schema = json.loads((schemas / f"{record.kind}.json").read_text())
            attributes = record.resource(None, 1).attributes
            jsonschema.validate(dict(attributes), schema)
            assert set(attributes) == record.attribute_names


def test_a_placeholder_must_give_exactly_the_column_attributes() -> None:
    ticket = next(r for c in CAPABILITIES for r in c.records if r.kind == "ticket")
    with pytest.raises(ValueError, match="placeholder"):
        RecordPolicy(
            kind="ticket",
            model=ticket.model,
            columns=ticket.columns,
            placeholder={k: v for k, v in ticket.placeholder.items() if k != "team"},
        )
