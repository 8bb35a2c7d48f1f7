"""``make dev REPLICAS=2`` as a developer runs it: two server processes on PORT and PORT + 1
over one PostgreSQL, one PDP and one OpenBao, each with its own Vault login; what one writes the
other reads; Ctrl-C stops both."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from ops.devstack import free_port_pair
from ops.ports import port_is_free
from tests.e2e.ops.dev_process import DevStack, dev_environment, free_dev_ports


@dataclass
class ReplicatedDevStack(DevStack):
    def dev_args(self) -> list[str]:
        return [*super().dev_args(), "--store", "postgres", "--replicas", "2"]

    def replica_url(self, number: int) -> str:
        return f"http://127.0.0.1:{int(self.env['PORT']) + number - 1}/mcp"

    def replica_client(self, number: int, name: str) -> Client[Any]:
        return Client(StreamableHttpTransport(self.replica_url(number), auth=self.token(name)))


def two_server_ports() -> dict[str, str]:
    """The dev ports, with PORT + 1 free and not taken by another service either."""
    while True:
        ports = free_dev_ports()
        ports["PORT"] = str(free_port_pair())
        taken = [int(v) for k, v in ports.items() if k != "PORT"]
        server = int(ports["PORT"])
        if not {server, server + 1} & {*taken, int(ports["OPENBAO_PORT"]) + 1}:
            return ports


@pytest.fixture
def stack(tmp_path: Path, cerbos_bin: Path, bao_bin: Path) -> Iterator[ReplicatedDevStack]:
    dev = ReplicatedDevStack(
        tmp_path, cerbos_bin, bao_bin, dev_environment(tmp_path, two_server_ports())
    )
    yield dev
    dev.stop()


async def test_make_dev_replicas_2_serves_two_processes_over_one_store(
    stack: ReplicatedDevStack,
) -> None:
    stack.start(timeout=240)
    banner = stack.output()[0].read_text()
    assert stack.replica_url(2) in banner and "each replica its own Vault login" in banner

    async with stack.replica_client(1, "alice") as first:
        created = await first.call_tool("create_ticket", {"title": "Written by replica 1"})
    ticket = created.structured_content["id"]  # type: ignore[index]
    async with stack.replica_client(2, "alice") as second:
        read = await second.call_tool("get_ticket", {"ticket_id": ticket})
        changed = await second.call_tool("update_ticket", {"ticket_id": ticket, "priority": "high"})
    assert read.structured_content["title"] == "Written by replica 1"  # type: ignore[index]
    assert changed.structured_content["priority"] == "high"  # type: ignore[index]

    # Replica 2 logged in with a credential of its own: its wrapped secret id is spent.
    own = stack.state / "vault" / "credential" / "replica-2"
    assert (own / "role-id").exists() and not (own / "secret-id.wrapped").exists()
    assert (stack.state / "replicas" / "replica-2.log").exists()

    server_ports = [int(stack.env["PORT"]), int(stack.env["PORT"]) + 1]
    assert not any(port_is_free(p) for p in server_ports)
    assert stack.stop() == 0
    assert all(port_is_free(p) for p in server_ports)
