"""The official TypeScript SDK clients (what MCP Inspector and most desktop and IDE clients run)
get what the Python client gets, for every demo principal.

The TypeScript client (mcp_client.mjs beside this file, installed by ``make interop-tools``) is not
the Python one: it validates structured tool output against the tool's output schema with
formats checked, and it acts on the advertised capabilities. It runs in three flavours: the 1.x
SDK (``@modelcontextprotocol/sdk``, desktop and IDE clients, MCP Inspector 1.x) and the 2.x
client (``@modelcontextprotocol/client``, MCP Inspector 2.x), the latter on both protocol eras.
For each principal and flavour it runs once against the real server with a plan: call every
registered tool with valid arguments (plus an unknown one), read resources, get prompts. The
expectations come from the policy suites, as in tests/e2e/authz/test_authorization_matrix.py,
and the Python client runs the same plan on fresh records.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError

from tests.e2e.authz.test_authorization_matrix import (
    DEMO_PRINCIPALS,
    EXAMPLES,
    PROMPTS,
    RESOURCES,
    TOOLS,
)
from tests.support import ROOT, RunningServer, arguments_for, insert_account, insert_ticket

CLIENT_SCRIPT = Path(__file__).with_name("mcp_client.mjs")
UNKNOWN_TOOL = "no_such_tool"
UNKNOWN_PROMPT = "no_such_prompt"
MISSING_URI = "nothing://here"
TEMPLATES = {"ticket": "ticket://{ticket_id}", "account": "account://{account_id}"}


@dataclass(frozen=True)
class Flavour:
    """One TypeScript client: which SDK line, and how it negotiates the protocol version."""

    name: str
    sdk: str  # "sdk": @modelcontextprotocol/sdk 1.x; "client": @modelcontextprotocol/client 2.x
    negotiation: str  # "" (the SDK default: the initialize handshake) or "auto"
    protocol: str  # what the connection must end up speaking

    def __str__(self) -> str:
        return self.name


FLAVOURS = [
    Flavour("sdk-1.x", "sdk", "", "2025-11-25"),
    Flavour("client-2.x", "client", "", "2025-11-25"),
    Flavour("client-2.x-discover", "client", "auto", "2026-07-28"),
]


@dataclass(frozen=True)
class NodeClient:
    node: Path
    modules: Path

    def run(self, url: str, token: str, plan: dict[str, Any], flavour: Flavour) -> dict[str, Any]:
        completed = subprocess.run(
            [str(self.node), str(CLIENT_SCRIPT), url],
            input=json.dumps(plan),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            # Nothing inherited (NODE_OPTIONS and the like); the token is not in argv.
            env={
                "PATH": os.defpath,
                "MCP_BEARER_TOKEN": token,
                "NODE_CLIENT_DIR": str(self.modules),
                "MCP_TS_SDK": flavour.sdk,
                "MCP_TS_NEGOTIATION": flavour.negotiation,
            },
        )
        assert completed.returncode == 0, f"node client failed: {completed.stderr}"
        return dict(json.loads(completed.stdout))


@pytest.fixture(scope="module")
def node_client() -> NodeClient:
    configured = os.environ.get("NODE_BIN")
    nodes = [Path(configured)] if configured else sorted(ROOT.glob(".tools/node-*/node"))
    modules = Path(os.environ.get("NODE_CLIENT_DIR") or ROOT / ".tools" / "node-client")
    sdks = [modules / "node_modules" / "@modelcontextprotocol" / f.sdk for f in FLAVOURS]
    if not nodes or not nodes[-1].is_file() or not all(p.is_dir() for p in sdks):
        pytest.fail("Node or the TypeScript MCP SDK not found: run `make interop-tools`")
    return NodeClient(nodes[-1], modules)


# --- one plan, run once per principal by each client ----------------------------------------


def plan_for(server: RunningServer, who: str, reads: list[str]) -> dict[str, Any]:
    """Every registered tool with valid arguments on fresh records, an unknown tool, the reads,
    and every prompt (plus an unknown one)."""
    calls = [{"tool": UNKNOWN_TOOL, "arguments": {}}]
    calls += [
        {"tool": t, "arguments": arguments_for(dict(EXAMPLES[t]), server, who)} for t in EXAMPLES
    ]
    prompts = [
        {"name": UNKNOWN_PROMPT, "arguments": {}},
        {"name": "triage_ticket", "arguments": {"ticket_id": "1"}},
        {"name": "refund_review", "arguments": {"account_id": "1", "amount": "10"}},
    ]
    return {"calls": calls, "reads": reads, "prompts": prompts}


READS: dict[tuple[str, str], list[str]] = {}


def readable_uris(server: RunningServer, who: str) -> list[str]:
    """A missing URI, and one record per template the principal could read if allowed; the same
    for every client of the principal (reads change nothing)."""
    key = (server.url, who)
    if key not in READS:
        team = "tier2" if who == "bob" else "tier1"
        category = "billing" if who == "carol" else "technical"
        ticket = insert_ticket(server.db_path, team=team, category=category)
        account = insert_account(server.db_path)
        READS[key] = [MISSING_URI, f"ticket://{ticket}", f"account://{account}"]
    return READS[key]


def strip_sdk_prefix(message: str, code: int | None) -> str:
    """The 1.x SDK's McpError message is ``MCP error <code>: <server message>``."""
    prefix = f"MCP error {code}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def ts_outcome(entry: dict[str, Any]) -> tuple[Any, ...]:
    """What happened to one call/read/get in the TypeScript report, comparable across clients."""
    if "error" in entry:
        error = entry["error"]
        return ("raised", error["code"], strip_sdk_prefix(error["message"], error["code"]))
    result = entry["result"]
    if result.get("isError"):
        return ("tool error", " ".join(b.get("text", "") for b in result["content"]))
    if "structuredContent" in result:
        return ("ok", tuple(sorted(result["structuredContent"])))
    return ("ok",)


@dataclass
class Run:
    plan: dict[str, Any]
    report: dict[str, Any]
    reached: list[str]

    def calls(self) -> dict[str, dict[str, Any]]:
        return {c["tool"]: c for c in self.report["calls"]}


async def python_outcomes(server: RunningServer, who: str, plan: dict[str, Any]) -> dict[str, Any]:
    """The same plan through fastmcp.Client, in the shape of the TypeScript report."""
    outcomes: dict[str, Any] = {"calls": {}, "reads": {}, "prompts": {}}
    async with server.client(who) as client:
        outcomes["tools"] = {t.name for t in await client.list_tools()}
        outcomes["templates"] = {t.uri_template for t in await client.list_resource_templates()}
        outcomes["resources"] = {str(r.uri) for r in await client.list_resources()}
        outcomes["prompt_names"] = {p.name for p in await client.list_prompts()}
        for call in plan["calls"]:
            result = await client.call_tool(call["tool"], call["arguments"], raise_on_error=False)
            if result.is_error:
                text = " ".join(getattr(b, "text", "") for b in result.content)
                outcome: tuple[Any, ...] = ("tool error", text)
            elif result.structured_content is not None:
                outcome = ("ok", tuple(sorted(result.structured_content)))
            else:
                outcome = ("ok",)
            outcomes["calls"][call["tool"]] = outcome
        for uri in plan["reads"]:
            try:
                await client.read_resource(uri)
                outcomes["reads"][uri] = ("ok",)
            except MCPError as exc:
                outcomes["reads"][uri] = ("raised", exc.error.code, exc.error.message)
        for prompt in plan["prompts"]:
            try:
                await client.get_prompt(prompt["name"], prompt["arguments"])
                outcomes["prompts"][prompt["name"]] = ("ok",)
            except MCPError as exc:
                outcomes["prompts"][prompt["name"]] = ("raised", exc.error.code, exc.error.message)
    return outcomes


RUNS: dict[tuple[str, str, str], Run] = {}
PYTHON_RUNS: dict[tuple[str, str], dict[str, Any]] = {}


def typescript_run(
    server: RunningServer, node_client: NodeClient, who: str, flavour: Flavour
) -> Run:
    """The principal's one run of this TypeScript client on this server (cached: one Node
    process per principal and flavour)."""
    key = (server.url, who, flavour.name)
    if key not in RUNS:
        plan = plan_for(server, who, readable_uris(server, who))
        reached_before = len(server.reached.calls)
        report = node_client.run(server.url, server.token(who), plan, flavour)
        RUNS[key] = Run(plan, report, server.reached.calls[reached_before:])
    return RUNS[key]


async def python_run(server: RunningServer, who: str) -> dict[str, Any]:
    """The Python client on the same plan: the same reads and prompts, fresh records for calls."""
    key = (server.url, who)
    if key not in PYTHON_RUNS:
        plan = plan_for(server, who, readable_uris(server, who))
        PYTHON_RUNS[key] = await python_outcomes(server, who, plan)
    return PYTHON_RUNS[key]


def allowed(matrix: Any, who: str, action: str) -> set[str]:
    return {c for c in matrix.components if matrix.allows(who, c, action)}


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS, ids=str)
@pytest.mark.parametrize("who", DEMO_PRINCIPALS)
def test_typescript_client_lists_exactly_what_the_policies_allow(
    server: RunningServer, node_client: NodeClient, who: str, flavour: Flavour
) -> None:
    report = typescript_run(server, node_client, who, flavour).report
    assert set(report["tools"]) == allowed(TOOLS, who, "list")
    assert set(report["resourceTemplates"]) == allowed(RESOURCES, who, "list")
    assert set(report["prompts"]) == allowed(PROMPTS, who, "list")
    # Each list is complete in one go: no name twice across pages.
    for listed in ("tools", "resourceTemplates", "resources", "prompts"):
        assert len(report[listed]) == len(set(report[listed])), listed


@pytest.mark.parametrize("flavour", FLAVOURS, ids=str)
@pytest.mark.parametrize("who", DEMO_PRINCIPALS)
def test_allowed_calls_pass_the_typescript_sdk_output_validation(
    server: RunningServer, node_client: NodeClient, who: str, flavour: Flavour
) -> None:
    """The SDK checked each structured result against the tool's output schema (ajv, formats
    included); a mismatch would have surfaced as a raised -32602, after the tool already ran."""
    run = typescript_run(server, node_client, who, flavour)
    calls = run.calls()
    permitted = [t for t in EXAMPLES if TOOLS.allows(who, t, "call")]
    for tool in permitted:
        assert "result" in calls[tool], f"{who} / {tool}: {calls[tool].get('error')}"
        result = calls[tool]["result"]
        assert not result["isError"], f"{who} / {tool}: {result['content']}"
        assert isinstance(result.get("structuredContent"), dict), f"{who} / {tool}"
    assert run.reached == permitted


@pytest.mark.parametrize("flavour", FLAVOURS, ids=str)
@pytest.mark.parametrize("who", DEMO_PRINCIPALS)
def test_denied_calls_look_like_unknown_tools_to_the_typescript_client(
    server: RunningServer, node_client: NodeClient, who: str, flavour: Flavour
) -> None:
    calls = typescript_run(server, node_client, who, flavour).calls()
    unknown = ts_outcome(calls[UNKNOWN_TOOL])
    assert unknown[0] == "tool error"
    for tool in EXAMPLES:
        if not TOOLS.allows(who, tool, "call"):
            assert ts_outcome(calls[tool]) == ("tool error", unknown[1].replace(UNKNOWN_TOOL, tool))


@pytest.mark.parametrize("flavour", FLAVOURS, ids=str)
@pytest.mark.parametrize("who", DEMO_PRINCIPALS)
def test_reads_and_prompts_follow_the_policies_in_the_typescript_client(
    server: RunningServer, node_client: NodeClient, who: str, flavour: Flavour
) -> None:
    report = typescript_run(server, node_client, who, flavour).report
    reads = {r["uri"]: ts_outcome(r) for r in report["reads"]}
    missing = reads.pop(MISSING_URI)
    assert missing[0] == "raised"
    for uri, outcome in reads.items():
        if RESOURCES.allows(who, TEMPLATES[uri.split("://")[0]], "read"):
            assert outcome == ("ok",), uri
        else:
            assert outcome == (missing[0], missing[1], missing[2].replace(MISSING_URI, uri))
    prompts = {p["name"]: ts_outcome(p) for p in report["prompts_get"]}
    unknown = prompts.pop(UNKNOWN_PROMPT)
    assert unknown[0] == "raised"
    for name, outcome in prompts.items():
        if PROMPTS.allows(who, name, "get"):
            assert outcome == ("ok",), name
        else:
            assert outcome == (unknown[0], unknown[1], unknown[2].replace(UNKNOWN_PROMPT, name))


@pytest.mark.parametrize("flavour", FLAVOURS, ids=str)
@pytest.mark.parametrize("who", DEMO_PRINCIPALS)
async def test_typescript_and_python_clients_get_the_same_outcomes(
    server: RunningServer, node_client: NodeClient, who: str, flavour: Flavour
) -> None:
    report = typescript_run(server, node_client, who, flavour).report
    python = await python_run(server, who)
    assert set(report["tools"]) == python["tools"]
    assert set(report["resourceTemplates"]) == python["templates"]
    assert set(report["resources"]) == python["resources"]
    assert set(report["prompts"]) == python["prompt_names"]
    assert {c["tool"]: ts_outcome(c) for c in report["calls"]} == python["calls"]
    assert {r["uri"]: ts_outcome(r) for r in report["reads"]} == python["reads"]
    assert {p["name"]: ts_outcome(p) for p in report["prompts_get"]} == python["prompts"]


@pytest.mark.parametrize("flavour", FLAVOURS, ids=str)
def test_typescript_client_connects_without_calling_anything_the_server_refuses(
    server: RunningServer, node_client: NodeClient, flavour: Flavour
) -> None:
    """MCP Inspector sets a log level right after connecting when logging is advertised; the
    client script does the same, and that must not fail (here: logging is not advertised)."""
    report = typescript_run(server, node_client, "alice", flavour).report
    assert report["handshake"]["protocolVersion"] == flavour.protocol
    assert report.get("setLoggingLevel", {"ok": True}) == {"ok": True}


def test_client_docs_name_the_versions_the_makefile_pins() -> None:
    """docs/clients.md tells people which Node and SDK versions the tests ran."""
    makefile = (ROOT / "Makefile").read_text()
    docs = (ROOT / "docs" / "clients.md").read_text()
    names = "NODE_VERSION|TS_SDK_VERSION|TS_CLIENT_VERSION"
    pins = dict(re.findall(rf"^({names}) := (\S+)$", makefile, re.MULTILINE))
    assert set(pins) == {"NODE_VERSION", "TS_SDK_VERSION", "TS_CLIENT_VERSION"}
    assert f".tools/node-{pins['NODE_VERSION']}" in docs
    assert f"`@modelcontextprotocol/sdk` {pins['TS_SDK_VERSION']}" in docs
    assert f"`@modelcontextprotocol/client` {pins['TS_CLIENT_VERSION']}" in docs
