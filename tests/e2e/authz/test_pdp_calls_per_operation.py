"""What each MCP operation costs at the PDP, counted in the PDP's own decision log: one
CheckResources per tools/list however many tools there are; a tools/call costs the tool gate and,
for a record tool, the record decision, and nothing else."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

import pytest
from fastmcp import Client, FastMCP
from pydantic import Field

from bench.servers import add_report_tools
from ops.devstack import PDP
from ops.policy_suites import component_matrix
from server.app import create_server
from server.settings import Settings
from tests.support import RunningServer, entry_inputs, pdp_decisions, start_server
from tools import CAPABILITIES

EXTRA_TOOLS = 150
TOOLS = component_matrix("tool")
REGISTERED_TOOLS = sum(len(c.tools) for c in CAPABILITIES)


def add_many_tools(mcp: FastMCP[Any]) -> None:
    add_report_tools(mcp, EXTRA_TOOLS)


# What each operation asks the PDP, without the decision cache (which answers repeated
# component decisions itself: test_decision_cache.py).
UNCACHED = {"authz_cache_seconds": 0}


@pytest.fixture(scope="module")
def server(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[RunningServer]:
    running = start_server(make_settings(pdp, **UNCACHED), token)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def big_server(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> Iterator[RunningServer]:
    running = start_server(make_settings(pdp, **UNCACHED), token, prepare=add_many_tools)
    yield running
    running.stop()


async def test_one_check_resources_per_tools_list_whatever_the_tool_count(
    big_server: RunningServer, pdp: PDP
) -> None:
    async with (
        big_server.client("alice") as client,
        pdp_decisions(big_server, pdp.audit_log) as caused,
    ):
        tools = await client.list_tools()
    # The report tools are not released in the policy: alice sees exactly her suite's tools.
    assert {t.name for t in tools} == set(TOOLS.allowed_for("alice", "list"))
    assert len(caused) == 1, f"{len(caused)} PDP calls for one tools/list"
    inputs = entry_inputs(caused[0])
    assert len(inputs) == REGISTERED_TOOLS + EXTRA_TOOLS
    assert {i["resource"]["kind"] for i in inputs} == {"mcp_tool"}
    assert {tuple(i["actions"]) for i in inputs} == {("list",)}


async def test_a_call_costs_one_decision_for_one_resource(
    big_server: RunningServer, pdp: PDP
) -> None:
    async with big_server.client("dave") as client:  # unreleased tools are for admins only
        await client.list_tools()  # the client's own schema-cache listing, outside the count
        async with pdp_decisions(big_server, pdp.audit_log) as caused:
            await client.call_tool("report_007", {})
    assert len(caused) == 1
    (only,) = entry_inputs(caused[0])
    assert only["resource"]["id"] == "report_007" and only["actions"] == ["call"]


async def test_a_record_tool_call_costs_the_gate_and_the_record_decision_only(
    server: RunningServer, pdp: PDP
) -> None:
    """In particular the SDK's Mcp-Param header check must not list (and authorize) every tool."""
    async with server.client("alice") as client:
        await client.list_tools()
        async with pdp_decisions(server, pdp.audit_log) as caused:
            await client.call_tool("get_ticket", {"ticket_id": 1})
    decided = sorted(
        (i["resource"]["kind"], i["resource"]["id"], tuple(i["actions"]))
        for entry in caused
        for i in entry_inputs(entry)
    )
    assert decided == [("mcp_tool", "get_ticket", ("call",)), ("ticket", "1", ("view",))]


async def test_a_tool_mirroring_parameters_into_headers_is_refused_at_startup(
    pdp: PDP, make_settings: Callable[..., Settings]
) -> None:
    mcp = create_server(make_settings(pdp))

    def route(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
        return region

    mcp.tool(route, meta={"department": "support", "sensitivity": "internal"})
    with pytest.raises(Exception, match="Mcp-Param headers are not supported") as refused:
        async with Client(mcp):
            pass
    assert "route" in str(refused.value)
