"""A light MCP load generator: raw 2026-07-28 JSON-RPC over HTTP keep-alive connections.

The official clients spend far more CPU per call than the servers under test; on a 2-core machine
that would measure the client. Requests are built once and posted as bytes.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

PROTOCOL = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL,
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


@dataclass
class Sample:
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def calls(self) -> int:
        return len(self.latencies_ms)

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def request(
    method: str, params: dict[str, Any], token: str | None, name: str | None = None
) -> tuple[dict[str, str], bytes]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": PROTOCOL,
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": META}}
    return headers, json.dumps(body).encode()


def call_tool(
    name: str, arguments: dict[str, Any], token: str | None
) -> tuple[dict[str, str], bytes]:
    return request("tools/call", {"name": name, "arguments": arguments}, token, name=name)


def list_tools(token: str | None) -> tuple[dict[str, str], bytes]:
    return request("tools/list", {}, token)


def succeeded(response: httpx.Response) -> bool:
    if response.status_code != 200:
        return False
    text = response.text
    if text.startswith("event:") or text.startswith("data:"):
        text = [line[5:] for line in text.splitlines() if line.startswith("data:")][-1]
    reply = json.loads(text)
    result = reply.get("result")
    return isinstance(result, dict) and not result.get("isError", False)


async def run(
    url: str, prepared: tuple[dict[str, str], bytes], *, calls: int, concurrency: int
) -> Sample:
    headers, body = prepared
    latencies: list[float] = []
    errors = 0
    per_worker = calls // concurrency

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for _ in range(per_worker):
            started = time.perf_counter()
            response = await client.post(url, content=body, headers=headers)
            elapsed = (time.perf_counter() - started) * 1000
            if succeeded(response):
                latencies.append(elapsed)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        # Warm every connection and the server's caches before the clock starts.
        await asyncio.gather(
            *(client.post(url, content=body, headers=headers) for _ in range(concurrency))
        )
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Sample(seconds=seconds, latencies_ms=latencies, errors=errors)
