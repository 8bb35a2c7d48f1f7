"""End-to-end authorization matrix over real HTTP: what each demo principal sees and can do.

The expected matrix is read from the Cerbos policy suites (policies/tests/*_test.yaml), so this
test proves that the running server enforces exactly what the policy tests specify.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from mcp import MCPError

from ops.devstack import PDP
from ops.policy_suites import matrix
from server.settings import Settings
from tests.support import (
    RunningServer,
    arguments_for,
    db_snapshot,
    insert_account,
    insert_ticket,
    start_server,
)
from tools import CAPABILITIES

TOOLS = matrix("mcp_tool_test.yaml")
RESOURCES = matrix("mcp_resource_test.yaml")
PROMPTS = matrix("mcp_prompt_test.yaml")
DEMO_PRINCIPALS = ["alice", "bob", "carol", "dave", "erin", "mallory"]
EXAMPLES = {name: args for c in CAPABILITIES for name, args in c.examples.items()}


def error_text(result: Any) -> str:
    assert result.is_error
    return " ".join(getattr(block, "text", "") for block in result.content)


@pytest.mark.parametrize("who", DEMO_PRINCIPALS)
async def test_lists_show_exactly_what_the_policies_allow(server: RunningServer, who: str) -> None:
    async with server.client(who) as client:
        tools = {t.name for t in await client.list_tools()}
        templates = {t.uri_template for t in await client.list_resource_templates()}
        prompts = {p.name for p in await client.list_prompts()}
    assert tools == {t for t in TOOLS.components if TOOLS.allows(who, t, "list")}
    assert templates == {r for r in RESOURCES.components if RESOURCES.allows(who, r, "list")}
    assert prompts == {p for p in PROMPTS.components if PROMPTS.allows(who, p, "list")}


@pytest.mark.parametrize("who", DEMO_PRINCIPALS)
async def test_allowed_calls_succeed_and_denied_calls_look_like_unknown_tools(
    server: RunningServer, who: str
) -> None:
    """The tool gate, with each capability's example arguments on records the caller may use:
    an allowed call reaches the tool and succeeds, a denied one gets exactly the error of a tool
    that does not exist, never reaches it and changes nothing."""
    async with server.client(who) as client:
        unknown = error_text(await client.call_tool("no_such_tool", {}, raise_on_error=False))
        for tool, example in EXAMPLES.items():
            arguments = arguments_for(dict(example), server, who)
            reached_before = len(server.reached.calls)
            before = db_snapshot(server.db_path)
            result = await client.call_tool(tool, arguments, raise_on_error=False)
            if TOOLS.allows(who, tool, "call"):
                assert not result.is_error, f"{who} should be able to call {tool}: {result.content}"
                assert server.reached.calls[reached_before:] == [tool], f"{who} / {tool}"
            else:
                assert error_text(result) == unknown.replace("no_such_tool", tool), (
                    f"{who} / {tool}"
                )
                assert server.reached.calls[reached_before:] == [], f"{tool} ran for {who}"
                assert db_snapshot(server.db_path) == before


async def test_an_admin_runs_every_example_successfully(
    pdp: PDP, make_settings: Callable[..., Settings], token: Callable[..., str]
) -> None:
    """Every tool's example arguments work on the demo data, for an admin with MFA (whom every
    rule allows): the examples are real calls, and the tools behind them work."""
    fresh = start_server(make_settings(pdp), token)
    try:
        async with fresh.client("dave") as client:
            for tool, arguments in EXAMPLES.items():
                result = await client.call_tool(tool, dict(arguments), raise_on_error=False)
                assert not result.is_error, f"{tool}: {error_text(result)}"
    finally:
        fresh.stop()


@pytest.mark.parametrize("who", DEMO_PRINCIPALS)
async def test_resource_reads_follow_the_policies_and_denials_look_like_missing(
    server: RunningServer, who: str
) -> None:
    team = "tier2" if who == "bob" else "tier1"
    category = "billing" if who == "carol" else "technical"
    ticket = insert_ticket(server.db_path, team=team, category=category)
    uris = {
        "ticket://{ticket_id}": f"ticket://{ticket}",
        "account://{account_id}": f"account://{insert_account(server.db_path)}",
    }
    async with server.client(who) as client:
        with pytest.raises(MCPError) as missing:
            await client.read_resource("nothing://here")
        for template, uri in uris.items():
            if RESOURCES.allows(who, template, "read"):
                contents = await client.read_resource(uri)
                assert contents and uri.split("://")[1] in contents[0].text
            else:
                with pytest.raises(MCPError) as denied:
                    await client.read_resource(uri)
                assert denied.value.error.code == missing.value.error.code
                assert denied.value.error.message == missing.value.error.message.replace(
                    "nothing://here", uri
                )


@pytest.mark.parametrize("who", DEMO_PRINCIPALS)
async def test_prompt_gets_follow_the_policies_and_denials_look_like_missing(
    server: RunningServer, who: str
) -> None:
    arguments = {
        "triage_ticket": {"ticket_id": "1"},
        "refund_review": {"account_id": "1", "amount": "10"},
    }
    async with server.client(who) as client:
        with pytest.raises(MCPError) as missing:
            await client.get_prompt("no_such_prompt", {})
        for prompt, args in arguments.items():
            if PROMPTS.allows(who, prompt, "get"):
                result = await client.get_prompt(prompt, args)
                assert result.messages
            else:
                with pytest.raises(MCPError) as denied:
                    await client.get_prompt(prompt, args)
                assert denied.value.error.code == missing.value.error.code
                assert denied.value.error.message == missing.value.error.message.replace(
                    "no_such_prompt", prompt
                )


async def test_denied_tool_name_appears_nowhere_in_the_callers_responses(
    server: RunningServer,
) -> None:
    async with server.client("mallory") as client:
        listed = await client.list_tools()
        templates = await client.list_resource_templates()
        prompts = await client.list_prompts()
    wire = " ".join(t.model_dump_json() for t in [*listed, *templates, *prompts])
    for hidden in (
        "delete_account",
        "issue_refund",
        "list_accounts",
        "refund_review",
        "account://",
    ):
        assert hidden not in wire
