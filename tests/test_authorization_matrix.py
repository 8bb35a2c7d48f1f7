"""End-to-end authorization matrix over real HTTP: what each demo principal sees and can do.

The expected matrix is read from the Cerbos policy suites (policies/tests/*_test.yaml), so this
test proves that the running server enforces exactly what the policy tests specify.
"""

from __future__ import annotations

from typing import Any

import pytest
from mcp import MCPError

from tests.support import RunningServer, db_snapshot, insert_account, insert_ticket, policy_matrix

TOOLS = policy_matrix("mcp_tool_test.yaml")
RESOURCES = policy_matrix("mcp_resource_test.yaml")
PROMPTS = policy_matrix("mcp_prompt_test.yaml")
DEMO_PRINCIPALS = ["alice", "bob", "carol", "dave", "erin", "mallory"]
REGISTERED_TOOLS = [t for t in TOOLS.components if t != "drop_database"]


def tool_arguments(tool: str, server: RunningServer, who: str) -> dict[str, Any]:
    """Valid arguments for one call, on a fresh record the caller's record-level rules allow
    (this test is about the tool gate), so calls never depend on each other."""
    db = server.db_path
    team = "tier2" if who == "bob" else "tier1"
    ticket = {"team": team, "category": "billing" if who == "carol" else "technical"}
    match tool:
        case "list_tickets" | "list_accounts":
            return {}
        case "create_ticket":
            return {"title": "Printer is on fire", "team": team}
        case "get_ticket" | "delete_ticket":
            return {"ticket_id": insert_ticket(db, **ticket)}
        case "update_ticket":
            return {"ticket_id": insert_ticket(db, **ticket), "priority": "high"}
        case "assign_ticket":
            return {"ticket_id": insert_ticket(db, **ticket), "assignee": "bob"}
        case "close_ticket":
            return {"ticket_id": insert_ticket(db, **ticket), "resolution": "Replaced the toner"}
        case "get_account" | "delete_account":
            return {"account_id": insert_account(db)}
        case "update_plan":
            return {"account_id": insert_account(db), "plan": "enterprise"}
        case "issue_refund":
            return {"account_id": insert_account(db), "amount": "25.50", "reason": "Goodwill"}
        case "suspend_account":
            return {"account_id": insert_account(db), "reason": "Chargeback fraud"}
    raise AssertionError(f"no arguments for {tool}")


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
    async with server.client(who) as client:
        unknown = error_text(await client.call_tool("no_such_tool", {}, raise_on_error=False))
        for tool in REGISTERED_TOOLS:
            arguments = tool_arguments(tool, server, who)
            reached_before = len(server.reached.calls)
            before = db_snapshot(server.db_path)
            result = await client.call_tool(tool, arguments, raise_on_error=False)
            if TOOLS.allows(who, tool, "call"):
                assert not result.is_error, f"{who} should be able to call {tool}: {result.content}"
                assert server.reached.calls[reached_before:] == [tool]
            else:
                assert error_text(result) == unknown.replace("no_such_tool", tool), (
                    f"{who} / {tool}"
                )
                assert server.reached.calls[reached_before:] == [], f"{tool} ran for {who}"
                assert db_snapshot(server.db_path) == before


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
