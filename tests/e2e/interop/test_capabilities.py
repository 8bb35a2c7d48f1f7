"""The server advertises exactly what it serves: every capability it announces, in either
protocol era, names methods that the server answers (not refuses as unknown).

Clients act on what is advertised: MCP Inspector calls ``logging/setLevel`` right after
connecting when ``logging`` is advertised, and gives up if that fails. The capabilities are read
from the wire, in raw JSON-RPC: from ``initialize`` (handshake era, 2025-11-25) and from
``server/discover`` (2026-07-28).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)

from tests.support import RunningServer

LEGACY = "2025-11-25"
MODERN = "2026-07-28"
METHOD_NOT_FOUND = -32601
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CLIENT_INFO = {"name": "raw", "version": "1"}

# What each capability lets a client call, per era. Flags that only announce notifications the
# server may send (handshake-era listChanged) need no method. A capability missing here fails the
# test: map it (to the methods it implies) before the server advertises it.
CAPABILITY_METHODS: dict[str, dict[str, tuple[str, ...]]] = {
    "tools": {"": ("tools/list", "tools/call")},
    "resources": {
        "": ("resources/list", "resources/templates/list", "resources/read"),
        "subscribe": ("resources/subscribe", "resources/unsubscribe"),
    },
    "prompts": {"": ("prompts/list", "prompts/get")},
    "logging": {"": ("logging/setLevel",)},
    "completions": {"": ("completion/complete",)},
    "tasks": {
        "": ("tasks/get", "tasks/result"),
        "list": ("tasks/list",),
        "cancel": ("tasks/cancel",),
    },
}
LIST_CHANGED_METHODS = {LEGACY: (), MODERN: ("subscriptions/listen",)}
# 2026-07-28: logging is a per-request opt-in in _meta, there is no logging/setLevel.
ERA_WITHOUT = {MODERN: {"logging/setLevel"}, LEGACY: set()}
# Extensions add no request method of their own. MCP Apps (FastMCP advertises it on every
# server) is served through tools/list and resources/read.
EXTENSION_METHODS: dict[str, tuple[str, ...]] = {
    "io.modelcontextprotocol/ui": ("tools/list", "resources/read"),
}

# Parameters good enough for the method to be routed; its answer may still be an error.
PARAMS: dict[str, dict[str, Any]] = {
    "tools/call": {"name": "list_tickets", "arguments": {}},
    "resources/read": {"uri": "ticket://1"},
    "resources/subscribe": {"uri": "ticket://1"},
    "resources/unsubscribe": {"uri": "ticket://1"},
    "prompts/get": {"name": "triage_ticket", "arguments": {"ticket_id": "1"}},
    "logging/setLevel": {"level": "info"},
    "completion/complete": {
        "ref": {"type": "ref/prompt", "name": "triage_ticket"},
        "argument": {"name": "ticket_id", "value": ""},
    },
    "tasks/get": {"taskId": "0"},
    "tasks/result": {"taskId": "0"},
    "tasks/cancel": {"taskId": "0"},
}


def reply_of(response: httpx.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return dict(json.loads(data[-1]))
    return dict(response.json())


class LegacySession:
    """A handshake-era conversation: initialize, then requests in the session."""

    def __init__(self, server: RunningServer, who: str) -> None:
        self.url = server.url
        self.headers = {**HEADERS, "Authorization": f"Bearer {server.token(who)}"}
        self.next_id = 0
        self.initialize_result = self.request(
            "initialize",
            {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": CLIENT_INFO},
        )["result"]
        self.headers["mcp-protocol-version"] = self.initialize_result["protocolVersion"]
        httpx.post(
            self.url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers=self.headers,
            timeout=10,
        )

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}}
        response = httpx.post(self.url, json=body, headers=self.headers, timeout=10)
        if "mcp-session-id" in response.headers:
            self.headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
        return reply_of(response)


class ModernClient:
    """2026-07-28: no session; every request carries the version, client info and capabilities."""

    def __init__(self, server: RunningServer, who: str) -> None:
        self.url = server.url
        self.headers = {
            **HEADERS,
            "Authorization": f"Bearer {server.token(who)}",
            "mcp-protocol-version": MODERN,
        }
        self.next_id = 0

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        meta = {
            PROTOCOL_VERSION_META_KEY: MODERN,
            CLIENT_INFO_META_KEY: CLIENT_INFO,
            CLIENT_CAPABILITIES_META_KEY: {},
        }
        body = {
            "jsonrpc": "2.0",
            "id": self.next_id,
            "method": method,
            "params": {**(params or {}), "_meta": meta},
        }
        headers = {**self.headers, "mcp-method": method}
        name = (params or {}).get("name") or (params or {}).get("uri")
        if isinstance(name, str):
            headers["mcp-name"] = name
        return reply_of(httpx.post(self.url, json=body, headers=headers, timeout=10))


def implied_methods(capabilities: dict[str, Any], era: str) -> dict[str, tuple[str, ...]]:
    """``capability path -> methods a client may call because of it``; fails on an unmapped one."""
    implied: dict[str, tuple[str, ...]] = {}
    for name, settings in capabilities.items():
        if name == "experimental":
            assert not settings, f"experimental capabilities advertised: {settings}"
            continue
        if name == "extensions":
            for extension in settings or {}:
                assert extension in EXTENSION_METHODS, f"unmapped extension {extension!r}"
                implied[f"extensions.{extension}"] = EXTENSION_METHODS[extension]
            continue
        assert name in CAPABILITY_METHODS, f"unmapped capability {name!r}: {settings}"
        flags = CAPABILITY_METHODS[name]
        implied[name] = tuple(m for m in flags[""] if m not in ERA_WITHOUT[era])
        for flag, value in (settings or {}).items():
            if not value:
                continue
            # 2026-07-28 delivers change and update notifications on subscriptions/listen.
            if flag == "listChanged" or (flag == "subscribe" and era == MODERN):
                implied[f"{name}.{flag}"] = LIST_CHANGED_METHODS[era]
            else:
                assert flag in flags, f"unmapped capability flag {name}.{flag}: {settings}"
                implied[f"{name}.{flag}"] = flags[flag]
    return implied


def assert_every_advertised_method_is_served(
    capabilities: dict[str, Any], era: str, send: Any
) -> None:
    refused = {}
    for capability, methods in implied_methods(capabilities, era).items():
        for method in methods:
            reply = send(method, PARAMS.get(method, {}))
            if reply.get("error", {}).get("code") == METHOD_NOT_FOUND:
                refused[method] = capability
    assert refused == {}, f"{era}: advertised but refused as unknown: {refused}"


# dave may use every component; mallory almost none: what is advertised must not depend on it.
@pytest.mark.parametrize("who", ["dave", "mallory"])
def test_initialize_advertises_only_methods_the_server_serves(
    server: RunningServer, who: str
) -> None:
    session = LegacySession(server, who)
    capabilities = session.initialize_result["capabilities"]
    assert {"tools", "resources", "prompts"} <= capabilities.keys()
    assert_every_advertised_method_is_served(capabilities, LEGACY, session.request)


@pytest.mark.parametrize("who", ["dave", "mallory"])
def test_discover_advertises_only_methods_the_server_serves(
    server: RunningServer, who: str
) -> None:
    client = ModernClient(server, who)
    discovered = client.request("server/discover")["result"]
    assert MODERN in discovered["supportedVersions"]
    capabilities = discovered["capabilities"]
    assert {"tools", "resources", "prompts"} <= capabilities.keys()
    assert_every_advertised_method_is_served(capabilities, MODERN, client.request)


def test_both_eras_advertise_the_same_capabilities(server: RunningServer) -> None:
    legacy = LegacySession(server, "alice").initialize_result["capabilities"]
    modern = ModernClient(server, "alice").request("server/discover")["result"]["capabilities"]
    # The handshake era has no extensions field; listChanged means different things per era.
    assert set(legacy) == set(modern) - {"extensions"}


def test_logging_is_not_advertised_because_no_log_messages_are_sent(server: RunningServer) -> None:
    """The authorization middleware refuses logging/setLevel (tests/test_protocol_surface.py),
    and the server never sends notifications/message: logging is neither served nor advertised."""
    legacy = LegacySession(server, "alice")
    assert "logging" not in legacy.initialize_result["capabilities"]
    assert legacy.request("logging/setLevel", {"level": "info"})["error"]["code"] == (
        METHOD_NOT_FOUND
    )
    discovered = ModernClient(server, "alice").request("server/discover")["result"]
    assert "logging" not in discovered["capabilities"]


def test_the_mapping_catches_an_advertised_capability_that_is_refused(
    server: RunningServer,
) -> None:
    """The check above has teeth: logging, as the server advertised it before, fails it."""
    session = LegacySession(server, "dave")
    with pytest.raises(AssertionError, match="logging/setLevel"):
        assert_every_advertised_method_is_served({"logging": {}}, LEGACY, session.request)
    with pytest.raises(AssertionError, match="unmapped capability"):
        implied_methods({"sampling": {}}, LEGACY)
