"""What the server accepts at all: methods outside the reviewed allowlist are refused as unknown,
hostile bodies are refused at the edge, and stdio without a configured principal is denied."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from mcp import MCPError

from ops.devstack import PDP
from server.authz.errors import NOT_AUTHORIZED
from server.settings import Settings
from tests.support import ROOT, RunningServer, db_snapshot, hostile_bodies

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class RawSession:
    """A legacy (session-based) MCP conversation in raw JSON-RPC, to send what clients would not."""

    def __init__(self, server: RunningServer, who: str) -> None:
        self.server = server
        self.headers = {**HEADERS, "Authorization": f"Bearer {server.token(who)}"}
        self.next_id = 0
        init = self.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        )
        assert "result" in init
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def post(self, body: dict[str, Any]) -> httpx.Response:
        response = httpx.post(self.server.url, json=body, headers=self.headers, timeout=10)
        if "mcp-session-id" in response.headers:
            self.headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
        return response

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        response = self.post(
            {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}}
        )
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            data = [
                line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")
            ]
            return dict(json.loads(data[-1]))
        return dict(response.json())


@pytest.mark.parametrize(
    "method",
    [
        "completion/complete",
        "logging/setLevel",
        "resources/subscribe",
        "resources/unsubscribe",
        "tasks/list",
        "tasks/get",
        "sampling/createMessage",
        "roots/list",
        "admin/shutdown",
        "tools/delete",
    ],
)
def test_methods_outside_the_allowlist_are_refused_as_unknown(
    server: RunningServer, method: str
) -> None:
    session = RawSession(server, "dave")
    reply = session.request(
        method,
        {
            "ref": {"type": "ref/prompt", "name": "triage_ticket"},
            "argument": {"name": "ticket_id", "value": ""},
            "uri": "ticket://1",
            "level": "debug",
        },
    )
    assert reply["error"]["code"] == -32601, reply


def test_ping_and_lists_work_in_a_raw_session(server: RunningServer) -> None:
    session = RawSession(server, "alice")
    assert session.request("ping") == {"jsonrpc": "2.0", "id": 2, "result": {}}
    tools = session.request("tools/list")["result"]["tools"]
    assert "create_ticket" in {t["name"] for t in tools}


def test_oversized_body_is_refused_before_any_work(server: RunningServer) -> None:
    before = db_snapshot(server.db_path)
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "create_ticket",
                "arguments": {
                    "title": "big",
                    "description": "x" * (server.settings.max_body_bytes + 1),
                },
            },
        }
    )
    response = httpx.post(
        server.url,
        content=body,
        timeout=10,
        headers={**HEADERS, "Authorization": f"Bearer {server.token('alice')}"},
    )
    assert response.status_code == 413
    assert db_snapshot(server.db_path) == before
    assert RawSession(server, "alice").request("ping")["result"] == {}


@pytest.mark.parametrize("shape", ["[", '{"a":'])
def test_absurdly_nested_json_is_refused_and_the_server_stays_healthy(
    server: RunningServer, shape: str
) -> None:
    body = shape * 10_000  # within the size limit: only the depth is wrong
    response = httpx.post(
        server.url,
        content=body,
        timeout=10,
        headers={**HEADERS, "Authorization": f"Bearer {server.token('alice')}"},
    )
    assert response.status_code == 400
    assert RawSession(server, "alice").request("ping")["result"] == {}


def test_hostile_unauthenticated_bodies_are_refused_while_others_are_served(
    server: RunningServer,
) -> None:
    """Work before authentication is linear: bodies of escapes and unterminated strings at the
    size limit get their refusal at once, and a caller with a token is served meanwhile (a
    quadratic scan held the event loop for minutes per body)."""
    session = RawSession(server, "alice")
    answers: dict[str, int] = {}

    def send(name: str, body: bytes) -> None:
        answers[name] = httpx.post(
            server.url, content=body, headers=HEADERS, timeout=10
        ).status_code

    bodies = hostile_bodies(server.settings.max_body_bytes)
    threads = [threading.Thread(target=send, args=item) for item in bodies.items()]
    for thread in threads:
        thread.start()
    # Served while the hostile bodies are in flight; each request times out after 10 s.
    assert session.request("ping")["result"] == {}
    for thread in threads:
        thread.join(timeout=15)
    assert answers == dict.fromkeys(bodies, 401)


# --- stdio ---------------------------------------------------------------------------------------


def stdio_client(
    pdp: PDP, settings: Settings, tmp_db: str, principal: dict[str, Any] | None
) -> Client[Any]:
    env = {
        "MCP_TRANSPORT": "stdio",
        "MCP_PDP_ADDRESS": pdp.grpc_address,
        "MCP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_db}",
        # Vault: the address and the credential files only, as in production.
        "MCP_VAULT_ADDRESS": settings.vault_address,
        "MCP_VAULT_ROLE_ID_FILE": str(settings.vault_role_id_file),
        "MCP_VAULT_WRAPPED_SECRET_ID_FILE": str(settings.vault_wrapped_secret_id_file),
        "PATH": "/usr/bin:/bin",
    }
    if principal is not None:
        env["MCP_STDIO_PRINCIPAL"] = json.dumps(principal)
    return Client(StdioTransport(sys.executable, ["-m", "server", "serve"], env=env, cwd=str(ROOT)))


async def test_stdio_without_a_configured_principal_denies_everything(
    pdp: PDP, make_settings: Callable[..., Settings], tmp_path: Any
) -> None:
    settings = make_settings(pdp)
    async with stdio_client(pdp, settings, str(tmp_path / "db.sqlite"), None) as client:
        with pytest.raises(MCPError) as denied:
            await client.list_tools()
        assert denied.value.error.code == NOT_AUTHORIZED
        with pytest.raises(MCPError):
            await client.call_tool("list_tickets", {})


async def test_stdio_with_a_configured_principal_is_still_checked_by_the_pdp(
    pdp: PDP, make_settings: Callable[..., Settings], tmp_path: Any
) -> None:
    erin = {"id": "erin", "roles": ["auditor"], "department": "compliance"}
    settings = make_settings(pdp)
    async with stdio_client(pdp, settings, str(tmp_path / "db.sqlite"), erin) as client:
        assert {t.name for t in await client.list_tools()} == {
            "list_tickets",
            "get_ticket",
            "list_accounts",
            "get_account",
        }
        result = await client.call_tool(
            "create_ticket", {"title": "Not for auditors"}, raise_on_error=False
        )
        assert result.is_error


def test_make_settings_fixture_is_hermetic(make_settings: Callable[..., Any], pdp: PDP) -> None:
    settings = make_settings(pdp)
    assert settings.stdio_principal is None and str(ROOT) not in settings.database_url
