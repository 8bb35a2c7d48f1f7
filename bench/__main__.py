"""``make bench``: start the real stack and measure it against bare FastMCP, in one run.

Prints a markdown table, writes the figures as JSON and prints that file's path as its last line.
Ratios are the headline: absolute numbers on a shared, noisy machine move between runs, ratios
taken minutes apart on the same machine much less. Every measurement is repeated and interleaved
(bare, full, bare, full ...), and the median repeat is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import load
from ops.dev_issuer import DevIssuer
from ops.devstack import (
    ROOT,
    ManagedProcess,
    UvicornThread,
    free_port,
    spawn,
    start_openbao,
    start_pdp,
    wait_until,
)
from ops.vault_bootstrap import bootstrap, deliver_server_credential
from server.capability import registry
from server.settings import Settings
from server.vault.client import ClientLabel, VaultRequestLog, make_client
from server.vault.identities import endpoint_from

TARGETS = {
    "throughput_ratio_16": (">=", 0.85),
    "p99_added_ms": ("<=", 5.0),
    "list100_speedup": (">=", 10.0),
    "vault_requests_per_call": ("<=", 0.0),
    "rss_mb_after_10k": ("<=", 200.0),
}


@dataclass
class Server:
    name: str
    url: str
    process: ManagedProcess

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


class Bench:
    def __init__(self, workdir: Path, cerbos: Path, bao: Path) -> None:
        self.workdir = workdir
        self.cerbos = cerbos
        self.bao = bao
        self.servers: list[Server] = []

    def __enter__(self) -> Bench:
        self.pdp = start_pdp(self.cerbos, workdir=self.workdir / "pdp")
        self.vault_audit = self.workdir / "openbao" / "audit.log"
        self.vault = start_openbao(
            self.bao, workdir=self.workdir / "openbao", audit_log=self.vault_audit
        )
        endpoint = endpoint_from(Settings(transport="stdio", vault_address=self.vault.address))
        self.vault_admin = make_client(
            endpoint,
            self.vault.root_token,
            label=ClientLabel("admin"),
            requests_log=VaultRequestLog(),
        )
        bootstrap(
            self.vault_admin,
            out_dir=self.workdir / "credential",
            capabilities=registry.load("tools"),
        )
        issuer_port = free_port()
        self.issuer = DevIssuer(self.workdir / "issuer", f"http://127.0.0.1:{issuer_port}")
        self.issuer_http = UvicornThread(self.issuer.asgi_app(), port=issuer_port).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.process.stop()
        self.issuer_http.stop()
        self.vault.process.stop()
        self.pdp.process.stop()

    def vault_requests(self) -> int:
        """Requests Vault itself has seen so far, from its own audit log."""
        with self.vault_audit.open() as log:
            return sum(1 for line in log if '"type":"request"' in line)

    def token(self, name: str) -> str:
        return self.issuer.token_for(name, audience="mcp-server-template", ttl_seconds=3 * 3600)

    def env(self, port: int, label: str, **extra: str) -> dict[str, str]:
        # Every server gets its own single-use credential, as from the bootstrap.
        role_id, wrapped = deliver_server_credential(
            self.vault_admin, out_dir=self.workdir / f"{label}-credential"
        )
        return {
            "MCP_ENVIRONMENT": "development",
            "MCP_AUTH_ISSUER": self.issuer.issuer,
            "MCP_AUTH_JWKS_URL": self.issuer.jwks_url,
            "MCP_AUTH_AUDIENCE": "mcp-server-template",
            "MCP_PDP_ADDRESS": self.pdp.grpc_address,
            "MCP_DATABASE_URL": f"sqlite+aiosqlite:///{self.workdir / label}.db",
            "PORT": str(port),
            "MCP_VAULT_ADDRESS": self.vault.address,
            "MCP_VAULT_ROLE_ID_FILE": str(role_id),
            "MCP_VAULT_WRAPPED_SECRET_ID_FILE": str(wrapped),
            # The benchmark measures authorization, not throttling: 16 clients share one caller.
            "MCP_RATE_LIMIT_PER_SECOND": "0",
            **extra,
        }

    def start(self, label: str, variant: str, *args: str, **env: str) -> Server:
        port = free_port()
        process = spawn(
            label,
            [sys.executable, "-m", "bench.servers", variant, "--port", str(port), *args],
            log_path=self.workdir / f"{label}.log",
            env=self.env(port, label, **env),
        )
        server = Server(label, f"http://127.0.0.1:{port}/mcp", process)
        self.servers.append(server)
        token = None if variant == "bare" else self.token("alice")
        probe = load.list_tools(token)
        if variant == "otlp-sink":
            wait_until(lambda: http_answers(server.url), timeout=30, what=label, interval=0.1)
            return server

        def answers() -> bool:
            if not process.alive():
                raise RuntimeError(f"{label} exited:\n{process.log_tail()}")
            try:
                sample = asyncio.run(load.run(server.url, probe, calls=1, concurrency=1))
            except httpx.TransportError:
                return False
            return sample.errors == 0

        wait_until(answers, timeout=60, what=label, interval=0.2)
        return server

    def stop(self, server: Server) -> None:
        server.process.stop()
        self.servers.remove(server)


def http_answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.TransportError:
        return False


def median_sample(samples: list[load.Sample]) -> load.Sample:
    return sorted(samples, key=lambda s: s.per_second)[len(samples) // 2]


def measure_calls(
    bench: Bench, servers: dict[str, Server], calls: int, concurrency: int, repeats: int
) -> dict[str, load.Sample]:
    authenticated = load.call_tool("get_ticket", {"ticket_id": 1}, bench.token("alice"))
    anonymous = load.call_tool("get_ticket", {"ticket_id": 1}, None)
    runs: dict[str, list[load.Sample]] = {name: [] for name in servers}
    for _ in range(repeats):
        for name, server in servers.items():
            prepared = anonymous if name == "bare" else authenticated
            sample = asyncio.run(
                load.run(server.url, prepared, calls=calls, concurrency=concurrency)
            )
            if sample.errors:
                raise RuntimeError(f"{name}: {sample.errors} failed calls")
            runs[name].append(sample)
    return {name: median_sample(samples) for name, samples in runs.items()}


def measure_vault_requests(bench: Bench, server: Server, calls: int) -> dict[str, float]:
    """Vault requests per tools/call at steady state, counted in Vault's audit log.

    Other servers sit idle meanwhile (their identities refresh only when used), so every
    request in the window is the measured server's.
    """
    alice = bench.token("alice")
    workloads = {
        "get_ticket": load.call_tool("get_ticket", {"ticket_id": 1}, alice),
        "create_ticket": load.call_tool("create_ticket", {"title": "bench ticket"}, alice),
        "get_account (masked)": load.call_tool("get_account", {"account_id": 2}, alice),
    }
    per_call = {}
    for name, prepared in workloads.items():
        asyncio.run(load.run(server.url, prepared, calls=10, concurrency=1))  # reach steady state
        before = bench.vault_requests()
        sample = asyncio.run(load.run(server.url, prepared, calls=calls, concurrency=1))
        if sample.errors:
            raise RuntimeError(f"{name}: {sample.errors} failed calls")
        per_call[name] = (bench.vault_requests() - before) / (sample.calls + 1)  # + the warm-up
    return per_call


def measure_lists(
    bench: Bench, sizes: list[int], lists: int, repeats: int
) -> dict[str, dict[int, float]]:
    """p50 milliseconds of one tools/list, batched vs per-tool checks, per tool count."""
    token = bench.token("alice")
    result: dict[str, dict[int, float]] = {"batched": {}, "per_tool": {}}
    for size in sizes:
        batched = bench.start(f"list-batched-{size}", "list-batched", "--tools", str(size))
        per_tool = bench.start(f"list-per-tool-{size}", "list-per-tool", "--tools", str(size))
        p50: dict[str, list[float]] = {"batched": [], "per_tool": []}
        for _ in range(repeats):
            for key, server in (("batched", batched), ("per_tool", per_tool)):
                sample = asyncio.run(
                    load.run(server.url, load.list_tools(token), calls=lists, concurrency=1)
                )
                if sample.errors:
                    raise RuntimeError(f"{server.name}: {sample.errors} failed lists")
                p50[key].append(sample.percentile(50))
        for key in p50:
            result[key][size] = statistics.median(p50[key])
        bench.stop(batched)
        bench.stop(per_tool)
    return result


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} x {model}, {system}, Python {platform.python_version()}"


def check(figures: dict[str, Any]) -> list[str]:
    lines = []
    for key, (op, bound) in TARGETS.items():
        value = figures.get(key)
        if value is None:
            lines.append(f"| {key} | {op} {bound} | not measured | - |")
            continue
        ok = value >= bound if op == ">=" else value <= bound
        lines.append(f"| {key} | {op} {bound} | {value} | {'met' if ok else 'MISSED'} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--cerbos", type=Path, required=True)
    parser.add_argument("--bao", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=2000, help="tools/call per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-calls", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=ROOT / ".dev" / "bench")
    args = parser.parse_args()
    workdir = args.out / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True)

    with Bench(workdir, args.cerbos, args.bao) as bench:
        sink = bench.start("otlp-sink", "otlp-sink")
        traced = {
            "MCP_OTEL_EXPORTER": "otlp",
            "MCP_OTEL_PROTOCOL": "http/protobuf",
            "MCP_OTEL_ENDPOINT": sink.url.removesuffix("/mcp"),
        }
        servers = {
            "bare": bench.start("bare", "bare"),
            "full": bench.start("full", "full", **traced),
            "untraced": bench.start("untraced", "full"),
        }
        one = measure_calls(bench, servers, args.calls // 4, 1, args.repeats)
        sixteen = measure_calls(bench, servers, args.calls, 16, args.repeats)
        full = servers["full"]
        rest = args.rss_calls - (args.calls // 4 + args.calls + 17) * args.repeats - 2
        if rest > 0:
            asyncio.run(
                load.run(
                    full.url,
                    load.call_tool("get_ticket", {"ticket_id": 1}, bench.token("alice")),
                    calls=rest,
                    concurrency=16,
                )
            )
        rss = full.rss_mb()
        vault = measure_vault_requests(bench, full, calls=200)
        lists = measure_lists(bench, [10, 100, 200], lists=30, repeats=args.repeats)

    figures: dict[str, Any] = {
        "throughput_ratio_16": round(sixteen["full"].per_second / sixteen["bare"].per_second, 3),
        "throughput_ratio_1": round(one["full"].per_second / one["bare"].per_second, 3),
        "p50_added_ms": round(one["full"].percentile(50) - one["bare"].percentile(50), 2),
        "p99_added_ms": round(one["full"].percentile(99) - one["bare"].percentile(99), 2),
        "list100_speedup": round(lists["per_tool"][100] / lists["batched"][100], 2),
        "list200_speedup": round(lists["per_tool"][200] / lists["batched"][200], 2),
        "vault_requests_per_call": round(max(vault.values()), 3),
        "vault_requests_per_call_by_tool": {k: round(v, 3) for k, v in vault.items()},
        "tracing_overhead_ratio": round(
            sixteen["untraced"].per_second / sixteen["full"].per_second, 3
        ),
        "tracing_added_p50_ms": round(
            one["full"].percentile(50) - one["untraced"].percentile(50), 2
        ),
        "rss_mb_after_10k": round(rss, 1),
        "calls_per_second": {
            f"{name}_c{c}": round(sample.per_second, 1)
            for c, run in ((1, one), (16, sixteen))
            for name, sample in run.items()
        },
        "latency_ms": {
            f"{name}_c{c}": {"p50": round(s.percentile(50), 2), "p99": round(s.percentile(99), 2)}
            for c, run in ((1, one), (16, sixteen))
            for name, s in run.items()
        },
        "tools_list_p50_ms": {
            k: {str(n): round(v, 2) for n, v in per.items()} for k, per in lists.items()
        },
        "machine": machine(),
        "calls": args.calls,
        "repeats": args.repeats,
    }
    report = render(figures)
    print(report)
    out = workdir / "bench.json"
    out.write_text(json.dumps(figures, indent=2))
    (workdir / "bench.md").write_text(report)
    print(out)
    return 0


def render(f: dict[str, Any]) -> str:
    cps, lat, lists = f["calls_per_second"], f["latency_ms"], f["tools_list_p50_ms"]

    def row(*cells: object) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    speedups = {
        n: round(lists["per_tool"][n] / lists["batched"][n], 1) for n in ("10", "100", "200")
    }
    return "\n".join(
        [
            f"Machine: {f['machine']}",
            "",
            row("tools/call `get_ticket`", "bare FastMCP", "full stack", "full / bare"),
            row("---", "---", "---", "---"),
            row("calls/s, 1 client", cps["bare_c1"], cps["full_c1"], f["throughput_ratio_1"]),
            row("calls/s, 16 clients", cps["bare_c16"], cps["full_c16"], f["throughput_ratio_16"]),
            row(
                "p50 ms, 1 client",
                lat["bare_c1"]["p50"],
                lat["full_c1"]["p50"],
                f"+{f['p50_added_ms']} ms",
            ),
            row(
                "p99 ms, 1 client",
                lat["bare_c1"]["p99"],
                lat["full_c1"]["p99"],
                f"+{f['p99_added_ms']} ms",
            ),
            "",
            row("tracing (full stack)", "exporter off", "exporter on (OTLP/HTTP)", "off / on"),
            row("---", "---", "---", "---"),
            row(
                "calls/s, 16 clients",
                cps["untraced_c16"],
                cps["full_c16"],
                f["tracing_overhead_ratio"],
            ),
            row(
                "p50 ms, 1 client",
                lat["untraced_c1"]["p50"],
                lat["full_c1"]["p50"],
                f"+{f['tracing_added_p50_ms']} ms",
            ),
            "",
            row("Vault requests per call (steady state)", *f["vault_requests_per_call_by_tool"]),
            row("---", "---", "---", "---"),
            row("", *f["vault_requests_per_call_by_tool"].values()),
            "",
            row("tools/list p50 ms", "batched check (template)", "one check per tool", "speed-up"),
            row("---", "---", "---", "---"),
            *(
                row(f"{n} tools", lists["batched"][n], lists["per_tool"][n], f"{speedups[n]}x")
                for n in ("10", "100", "200")
            ),
            "",
            row("target", "bound", "measured", ""),
            row("---", "---", "---", "---"),
            *check(f),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
