"""`make new-tool` and `make new-capability` in a copy of this checkout: right after them nothing
generated is stale, lint and the policy suites pass, and a real server built from the copy lists
the new tools to admins only, runs them, and mints the new capability's own Vault identity."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.dev_issuer import DevIssuer
from ops.devstack import ManagedProcess, free_port, spawn, start_openbao, start_pdp, wait_until
from server.capability.declaration import component_name
from tests.support import ROOT
from tools import CAPABILITIES

SERVER_ENV_PREFIXES = ("MCP_", "VAULT_", "BAO_")


def unused(name: str, taken: Collection[str]) -> str:
    """``name``, or ``name_2``, ``name_3``...: a clone may already have a tool or capability of
    that very name (scaffolded by its owner), and the scaffold refuses a name that is taken."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


TAKEN_TOOLS = {component_name(fn) for c in CAPABILITIES for fn in c.tools}
NEW_TOOL = unused("export_tickets", TAKEN_TOOLS)  # in an existing capability
NEW_CAPABILITY = unused("reports", {c.name for c in CAPABILITIES})
CAPABILITY_TOOL = unused("weekly_report", TAKEN_TOOLS | {NEW_TOOL})  # in the new capability


def copy_checkout(target: Path) -> Path:
    """The files git tracks or would track (untracked, not ignored), as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())
    return target


def run(copy: Path, *args: str, env: dict[str, str] | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(SERVER_ENV_PREFIXES)}
    done = subprocess.run(
        [*args],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**clean, **(env or {})},
    )
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Scaffolded:
    copy: Path
    output: str


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Scaffolded:
    copy = copy_checkout(tmp_path_factory.mktemp("checkout"))
    python = sys.executable
    output = run(copy, python, "-m", "ops", "new-tool", NEW_TOOL, "--capability", "tickets")
    output += run(copy, python, "-m", "ops", "new-capability", NEW_CAPABILITY, "--identity")
    output += run(
        copy, python, "-m", "ops", "new-tool", CAPABILITY_TOOL, "--capability", NEW_CAPABILITY
    )
    return Scaffolded(copy, output)


def test_the_scaffold_says_what_it_wrote_and_that_no_rule_was_needed(
    scaffolded: Scaffolded,
) -> None:
    out = scaffolded.output
    assert f"wrote tools/tickets/{NEW_TOOL}.py" in out
    assert "edited policies/tests/mcp_tool_test.yaml" in out
    assert f"wrote config/vault/policies/mcp-{NEW_CAPABILITY}.hcl" in out
    assert "policies/mcp_tool.yaml: no rule written" in out
    assert "`make identities` lists it" in out
    assert f"accepted new tool {NEW_TOOL}" in out
    assert f"accepted new tool {CAPABILITY_TOOL}" in out


def test_right_after_the_scaffold_nothing_is_stale_and_lint_and_policies_pass(
    scaffolded: Scaffolded, cerbos_bin: Path
) -> None:
    copy, bin_dir = scaffolded.copy, Path(sys.executable).parent
    run(copy, sys.executable, "-m", "ops", "generate", "--check")
    # The reviewed tool snapshot holds the new tools (accepted by the scaffold, in the diff).
    run(copy, sys.executable, "-m", "ops", "accept-tools", "--check")
    run(copy, str(bin_dir / "ruff"), "check", ".")
    run(copy, str(bin_dir / "ruff"), "format", "--check", ".")
    run(copy, str(bin_dir / "mypy"), "tools")
    compiled = run(copy, str(cerbos_bin), "compile", "--color=never", "policies")
    assert "[0 OK]" not in compiled and "FAILED" not in compiled


@dataclass
class CopyServer:
    url: str
    process: ManagedProcess
    admin_token_file: Path
    vault_address: str


@pytest.fixture(scope="module")
def copy_server(
    scaffolded: Scaffolded,
    cerbos_bin: Path,
    bao_bin: Path,
    issuer: DevIssuer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CopyServer]:
    """The copy's own server (its code, policies, capabilities), its own PDP and OpenBao, the
    latter bootstrapped by the copy's own `vault-bootstrap`."""
    work = tmp_path_factory.mktemp("copy-server")
    copy = scaffolded.copy
    pdp = start_pdp(cerbos_bin, workdir=work / "pdp", policies=copy / "policies")
    vault = start_openbao(bao_bin, workdir=work / "openbao")
    token_file = work / "admin-token"
    token_file.write_text(vault.root_token)
    token_file.chmod(0o600)
    ops_env = {"MCP_TRANSPORT": "stdio", "MCP_VAULT_ADDRESS": vault.address}
    run(
        copy,
        sys.executable,
        "-m",
        "ops",
        "vault-bootstrap",
        f"--admin-token-file={token_file}",
        f"--out-dir={work / 'credential'}",
        env=ops_env,
    )
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(SERVER_ENV_PREFIXES)}
    process = spawn(
        "copy-server",
        [sys.executable, "-m", "server", "serve"],
        log_path=work / "server.log",
        cwd=copy,
        env={
            **clean,
            "PORT": str(port),
            "MCP_AUTH_ISSUER": issuer.issuer,
            "MCP_AUTH_JWKS_URL": issuer.jwks_url,
            "MCP_PDP_ADDRESS": pdp.grpc_address,
            "MCP_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'store.db'}",
            "MCP_VAULT_ADDRESS": vault.address,
            "MCP_VAULT_ROLE_ID_FILE": str(work / "credential" / "role-id"),
            "MCP_VAULT_WRAPPED_SECRET_ID_FILE": str(work / "credential" / "secret-id.wrapped"),
        },
        unset_prefixes=SERVER_ENV_PREFIXES,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: ready(base, process), timeout=60, what="the copy's server")
        yield CopyServer(f"{base}/mcp", process, token_file, vault.address)
    finally:
        process.stop()
        vault.process.stop()
        pdp.process.stop()


def ready(base: str, process: ManagedProcess) -> bool:
    import urllib.error
    import urllib.request

    if not process.alive():
        raise RuntimeError(f"the copy's server exited:\n{process.log_tail(40)}")
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


async def test_the_new_tools_are_for_admins_only_and_run(
    copy_server: CopyServer, token: Callable[..., str]
) -> None:
    from fastmcp import Client
    from fastmcp.client.transports import StreamableHttpTransport

    def client(who: str) -> Client:  # type: ignore[type-arg]
        return Client(StreamableHttpTransport(copy_server.url, auth=token(who)))

    new = {NEW_TOOL, CAPABILITY_TOOL}
    for who in ("alice", "bob", "carol", "erin", "mallory"):
        async with client(who) as session:
            assert not new & {t.name for t in await session.list_tools()}, who
    async with client("dave") as session:
        assert new <= {t.name for t in await session.list_tools()}
        for name in sorted(new):
            result = await session.call_tool(name, {"text": "hello"})
            assert result.structured_content == {"message": "hello"}


def test_the_new_capability_has_its_own_vault_identity(
    scaffolded: Scaffolded, copy_server: CopyServer
) -> None:
    table = run(
        scaffolded.copy,
        sys.executable,
        "-m",
        "ops",
        "identities",
        f"--admin-token-file={copy_server.admin_token_file}",
        env={"MCP_TRANSPORT": "stdio", "MCP_VAULT_ADDRESS": copy_server.vault_address},
    )
    rows = [line for line in table.splitlines() if line.startswith(f"{NEW_CAPABILITY} ")]
    assert rows and f"token role mcp-{NEW_CAPABILITY}" in rows[0]
    assert f"secret/data/tools/{NEW_CAPABILITY}/config" in rows[0]
    assert f"{NEW_CAPABILITY}: default policy no" in table
