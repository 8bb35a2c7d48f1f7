"""A light MCP load generator: raw 2026-07-28 JSON-RPC over HTTP keep-alive connections.

The official clients spend far more CPU per call than the servers under test; on a 2-core machine
that would measure the client. Requests are built once and posted as bytes.

A workload is a list of prepared requests (different callers, different records); each of the
concurrent workers walks the whole list from its own offset, so every caller and every record is
spread over every connection and no cache sees one key only.

``python -m bench.load flood`` runs a flooding caller in a process of its own (so its client work
does not slow the measured caller's event loop): it reads one prepared request as JSON on stdin,
posts it as fast as ``--concurrency`` connections allow for ``--seconds`` and prints counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from server.edge.ratelimit import RATE_LIMITED

PROTOCOL = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL,
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}

Prepared = tuple[dict[str, str], bytes]


@dataclass
class Sample:
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""  # status and body of the first failed call, for the report

    @property
    def calls(self) -> int:
        return len(self.latencies_ms)

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies_ms, p)


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (no interpolation): a value that was actually observed."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def request(
    method: str, params: dict[str, Any], token: str | None, name: str | None = None
) -> Prepared:
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


def call_tool(name: str, arguments: dict[str, Any], token: str | None) -> Prepared:
    return request("tools/call", {"name": name, "arguments": arguments}, token, name=name)


def list_tools(token: str | None) -> Prepared:
    return request("tools/list", {}, token)


def reply(response: httpx.Response) -> dict[str, Any] | None:
    """The JSON-RPC reply of a response (plain JSON or the last SSE data line), if any."""
    text = response.text
    if text.startswith(("event:", "data:")):
        lines = [line[5:] for line in text.splitlines() if line.startswith("data:")]
        text = lines[-1] if lines else ""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def succeeded(response: httpx.Response) -> bool:
    if response.status_code != 200:
        return False
    answer = reply(response)
    result = answer.get("result") if answer else None
    return isinstance(result, dict) and not result.get("isError", False)


def outcome(response: httpx.Response) -> str:
    """ok | throttled | unauthenticated | http_<status> | rpc_<code> | tool_error"""
    if response.status_code == 429:
        return "throttled"
    if response.status_code == 401:
        return "unauthenticated"
    if response.status_code != 200:
        return f"http_{response.status_code}"
    answer = reply(response) or {}
    error = answer.get("error")
    if isinstance(error, dict):
        return "throttled" if error.get("code") == RATE_LIMITED else f"rpc_{error.get('code')}"
    result = answer.get("result")
    return "ok" if isinstance(result, dict) and not result.get("isError") else "tool_error"


def client(concurrency: int, local_address: str | None = None) -> httpx.AsyncClient:
    """Keep-alive connections from ``local_address`` (a loopback address of 127/8: separate
    callers get separate source addresses, as they would in front of a per-address limit)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = httpx.AsyncHTTPTransport(limits=limits, local_address=local_address)
    return httpx.AsyncClient(transport=transport, timeout=30)


async def run(
    url: str,
    workload: Prepared | Sequence[Prepared],
    *,
    calls: int,
    concurrency: int,
    local_address: str | None = None,
) -> Sample:
    """``calls`` requests over ``concurrency`` connections, each worker walking the workload."""
    prepared: Sequence[Prepared] = [workload] if isinstance(workload, tuple) else workload
    latencies: list[float] = []
    errors = 0
    first_error = ""
    per_worker = max(1, calls // concurrency)

    async def worker(http: httpx.AsyncClient, index: int) -> None:
        nonlocal errors, first_error
        position = index * len(prepared) // concurrency
        for _ in range(per_worker):
            headers, body = prepared[position % len(prepared)]
            position += 1
            started = time.perf_counter()
            response = await http.post(url, content=body, headers=headers)
            elapsed = (time.perf_counter() - started) * 1000
            if succeeded(response):
                latencies.append(elapsed)
            else:
                errors += 1
                first_error = first_error or f"{response.status_code} {response.text[:300]}"

    async with client(concurrency, local_address) as http:
        # Open every connection before the clock starts.
        await asyncio.gather(
            *(
                http.post(url, content=prepared[i % len(prepared)][1], headers=prepared[0][0])
                for i in range(concurrency)
            )
        )
        started = time.perf_counter()
        await asyncio.gather(*(worker(http, i) for i in range(concurrency)))
        seconds = time.perf_counter() - started
    return Sample(seconds=seconds, latencies_ms=latencies, errors=errors, first_error=first_error)


async def paced(
    url: str,
    workload: Sequence[Prepared],
    *,
    rate: float,
    seconds: float,
    local_address: str | None = None,
) -> Sample:
    """One caller on one connection, starting a call every ``1/rate`` s (or when the previous
    one returns, if later): a well-behaved client that stays under its rate limit."""
    latencies: list[float] = []
    errors = 0
    interval = 1 / rate
    async with client(1, local_address) as http:
        await http.post(url, content=workload[0][1], headers=workload[0][0])
        started = time.perf_counter()
        next_at = started
        position = 0
        while time.perf_counter() - started < seconds:
            headers, body = workload[position % len(workload)]
            position += 1
            sent = time.perf_counter()
            response = await http.post(url, content=body, headers=headers)
            elapsed = (time.perf_counter() - sent) * 1000
            if succeeded(response):
                latencies.append(elapsed)
            else:
                errors += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        total = time.perf_counter() - started
    return Sample(seconds=total, latencies_ms=latencies, errors=errors)


async def flood(
    url: str, prepared: Prepared, *, concurrency: int, seconds: float, local_address: str | None
) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()

    async def worker(http: httpx.AsyncClient) -> None:
        headers, body = prepared
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            try:
                response = await http.post(url, content=body, headers=headers)
            except httpx.TransportError:
                outcomes["transport_error"] += 1
                continue
            outcomes[outcome(response)] += 1

    started = time.perf_counter()
    async with client(concurrency, local_address) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    total = sum(outcomes.values())
    return {"requests": total, "per_second": round(total / elapsed, 1), **outcomes}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    commands = parser.add_subparsers(dest="command", required=True)
    flooding = commands.add_parser("flood", help="post one request (JSON on stdin) flat out")
    flooding.add_argument("--url", required=True)
    flooding.add_argument("--concurrency", type=int, default=16)
    flooding.add_argument("--seconds", type=float, required=True)
    flooding.add_argument("--local-address", default=None)
    args = parser.parse_args()
    given = json.load(sys.stdin)
    prepared: Prepared = (given["headers"], given["body"].encode())
    print("flooding", flush=True)  # the caller starts its clock on this line
    counts = asyncio.run(
        flood(
            args.url,
            prepared,
            concurrency=args.concurrency,
            seconds=args.seconds,
            local_address=args.local_address,
        )
    )
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
