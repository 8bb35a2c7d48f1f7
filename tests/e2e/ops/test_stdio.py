"""``make -s stdio user=NAME`` next to a running ``make dev``: the command a desktop or IDE client
launches. It gets a credential of its own from the dev stack, runs as exactly that demo
principal (the PDP still decides everything), and writes nothing but MCP to stdout."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from ops.devstack import wait_until
from ops.policy_suites import component_matrix
from tests.e2e.ops.dev_process import DevStack, dev_environment, free_dev_ports
from tests.support import ROOT

TOOLS = component_matrix("tool")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, cerbos_bin: Path, bao_bin: Path
) -> Iterator[DevStack]:
    base = tmp_path_factory.mktemp("dev-stack")
    dev = DevStack(base, cerbos_bin, bao_bin, dev_environment(base, free_dev_ports()))
    dev.start()
    yield dev
    dev.stop()


def stdio_client(
    stack: DevStack, user: str, stderr: Path, env: dict[str, str] | None = None
) -> Client[Any]:
    """The documented client configuration: ``make -s -C <checkout> stdio user=<name>``, with
    the same port variables and state directory as the running ``make dev``."""
    make = shutil.which("make")
    assert make is not None
    transport = StdioTransport(
        make,
        ["-s", "-C", str(ROOT), "stdio", f"user={user}"],
        env=env or stack.env,
        log_file=stderr,
    )
    return Client(transport)


@pytest.mark.parametrize("user", ["erin", "dave"])
async def test_stdio_next_to_make_dev_serves_exactly_that_principals_tools(
    stack: DevStack, user: str, tmp_path: Path
) -> None:
    async with stdio_client(stack, user, tmp_path / "stderr.log") as client:
        tools = {t.name for t in await client.list_tools()}
        listed = await client.call_tool("list_tickets", {"limit": 3})
    assert tools == set(TOOLS.allowed_for(user, "list"))
    assert listed.structured_content is not None and len(listed.structured_content["tickets"]) > 0


async def test_stdio_is_still_decided_by_the_pdp(stack: DevStack, tmp_path: Path) -> None:
    async with stdio_client(stack, "erin", tmp_path / "stderr.log") as client:
        denied = await client.call_tool(
            "create_ticket", {"title": "auditors read"}, raise_on_error=False
        )
    assert denied.is_error
    assert not TOOLS.allows("erin", "create_ticket", "call")


async def test_each_stdio_launch_spends_only_its_own_credential(
    stack: DevStack, tmp_path: Path
) -> None:
    """The dev server's credential files are untouched, and a launch leaves no credential behind
    (its private temporary directory is gone as soon as it has logged in)."""
    credential = stack.state / "vault" / "credential"
    before = sorted(p.name for p in credential.iterdir())
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**stack.env, "TMPDIR": str(temp)}
    async with (
        stdio_client(stack, "erin", tmp_path / "one.log", env) as one,
        stdio_client(stack, "erin", tmp_path / "two.log", env) as two,
    ):
        assert await one.list_tools() and await two.list_tools()
        # Once logged in, a server needs no file: its private directory is already gone, and
        # it goes on serving (a client that kills the process leaves nothing behind).
        wait_until(lambda: not any(temp.iterdir()), timeout=15, what="private directories gone")
        assert await one.call_tool("list_tickets", {"limit": 1})
    assert sorted(p.name for p in credential.iterdir()) == before
    for log in ("one.log", "two.log"):
        assert "credential in a private temp dir" in (tmp_path / log).read_text()


async def test_stdio_without_a_running_make_dev_says_so(tmp_path: Path) -> None:
    env = dev_environment(tmp_path, free_dev_ports())
    stderr = tmp_path / "stderr.log"
    transport = StdioTransport(
        "make", ["-s", "-C", str(ROOT), "stdio", "user=erin"], env=env, log_file=stderr
    )
    with pytest.raises(Exception):  # noqa: B017, PT011 - the client sees the process end
        async with Client(transport) as client:
            await client.list_tools()
    assert "no `make dev` is running" in stderr.read_text()


def test_the_launcher_token_can_only_deliver_the_servers_credential(stack: DevStack) -> None:
    """What `make dev` leaves on disk for stdio launches is no admin token: it reads the server
    role's role id and makes wrapped secret ids, and is refused everything else."""
    vault = stack.state / "vault"
    token = (vault / "stdio-launcher-token").read_text().strip()
    client = hvac.Client(
        url=f"http://127.0.0.1:{stack.env['OPENBAO_PORT']}", token=token, timeout=5
    )
    approle = client.auth.approle
    assert approle.read_role_id("mcp-server")["data"]["role_id"]
    assert approle.generate_secret_id("mcp-server", wrap_ttl=60)["wrap_info"]["token"]
    refused = [
        lambda: client.secrets.kv.v2.read_secret_version(
            path="mcp/server", mount_point="secret", raise_on_deleted_version=True
        ),
        lambda: client.sys.list_acl_policies(),
        lambda: client.auth.token.create(policies=["mcp-tickets"]),
        lambda: approle.generate_secret_id("some-other-role"),
        lambda: client.auth.token.lookup_self(),
    ]
    for attempt in refused:
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()
    assert (vault / "root-token").read_text().strip() != token
