"""`make dev` refuses before touching anything: a busy port (or two services on one port) is one
line naming the port, the service and the variable that moves it; a state directory in use is
refused, and so is `make clean` while a stack holds it. Real sockets and real flocks."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.dev import run_dev
from ops.ports import PortsBusy, dev_ports, port_is_free, refuse_busy_ports
from ops.statedir import ENTRIES, StackRunning, StateLock, clean, holder
from server.settings import Settings


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def settings_on(port: int, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("MCP_PORT", "MCP_PDP_ADDRESS", "MCP_VAULT_ADDRESS", "MCP_AUTH_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    return Settings(
        transport="stdio",
        port=port,
        pdp_address="127.0.0.1:1",
        vault_address="http://127.0.0.1:3",
        auth_issuer="http://127.0.0.1:5",
    )


def test_a_busy_port_is_one_line_naming_the_port_service_and_variable(
    listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = dev_ports(settings_on(listening, monkeypatch), pdp_http_port=2)
    assert not port_is_free(listening)
    with pytest.raises(PortsBusy) as refused:
        refuse_busy_ports([p for p in ports if p.port == listening])
    message = str(refused.value)
    assert "\n" not in message
    assert f"{listening} (MCP server; move it with PORT=<port>)" in message


def test_a_setting_given_directly_is_named_instead_of_the_port_variable(
    listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_on(4, monkeypatch).model_copy(
        update={"pdp_address": f"127.0.0.1:{listening}"}
    )
    monkeypatch.setenv("MCP_PDP_ADDRESS", f"127.0.0.1:{listening}")
    grpc = [p for p in dev_ports(settings, 2) if p.service == "Cerbos PDP gRPC"]
    with pytest.raises(PortsBusy, match="move it with MCP_PDP_ADDRESS="):
        refuse_busy_ports(grpc)


def test_openbao_s_cluster_port_is_checked_and_moved_with_openbao_s_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports = {p.service: p for p in dev_ports(settings_on(4, monkeypatch), 2)}
    cluster = ports["OpenBao cluster, OpenBao's port + 1"]
    assert cluster.port == 4 and cluster.variable == "OPENBAO_PORT"  # vault at 3


def test_two_services_on_one_port_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = dev_ports(settings_on(2, monkeypatch), pdp_http_port=2)
    with pytest.raises(PortsBusy, match=r"share a port \(2: MCP server \(PORT\) and Cerbos PDP"):
        refuse_busy_ports(ports)


def test_a_second_holder_of_the_state_directory_is_refused(tmp_path: Path) -> None:
    first = StateLock(tmp_path / "state")
    first.acquire(command="make dev")
    try:
        assert holder(tmp_path / "state") is not None
        with pytest.raises(StackRunning, match=r"is using .*: stop it first"):
            StateLock(tmp_path / "state").acquire(command="make dev")
        with pytest.raises(StackRunning):
            clean(tmp_path / "state")
    finally:
        first.release()
    assert holder(tmp_path / "state") is None


def test_clean_removes_only_what_make_dev_creates(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for name in ENTRIES:
        (state / name).parent.mkdir(parents=True, exist_ok=True)
        if "." in name:
            (state / name).write_text("x")
        else:
            (state / name).mkdir()
            (state / name / "inside").write_text("x")
    (state / "mine.txt").write_text("keep me")
    removed = clean(state)
    assert set(removed) == set(ENTRIES) - {"dev.lock"}
    assert sorted(p.name for p in state.iterdir()) == ["mine.txt"]
    (state / "mine.txt").unlink()
    assert clean(state) == [] and not state.exists()


def test_each_further_replica_s_port_is_checked_and_moved_with_port(
    listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make dev REPLICAS=3 also binds PORT + 1 and PORT + 2: a busy one is refused in one line
    naming it, as any other port."""
    ports = dev_ports(settings_on(listening - 2, monkeypatch), pdp_http_port=2, replicas=3)
    servers = [p for p in ports if p.service.startswith("MCP server")]
    assert [p.port for p in servers] == [listening - 2, listening - 1, listening]
    assert {p.variable for p in servers} == {"PORT"}
    with pytest.raises(PortsBusy) as refused:
        refuse_busy_ports([p for p in ports if p.port == listening])
    assert "\n" not in str(refused.value)
    assert f"{listening} (MCP server replica 3, PORT + 2; move it with PORT=<port>)" in str(
        refused.value
    )


def test_a_replica_s_port_on_another_service_s_port_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports = dev_ports(settings_on(6, monkeypatch), pdp_http_port=7, replicas=2)
    with pytest.raises(PortsBusy, match=r"share a port \(7: MCP server replica 2, PORT \+ 1"):
        refuse_busy_ports(ports)


@pytest.mark.parametrize(("replicas", "store"), [(2, "sqlite"), (0, "postgres"), (9, "postgres")])
def test_replicas_need_the_shared_store_and_a_sane_count_before_anything_starts(
    replicas: int, store: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DEV_STATE_DIR", str(tmp_path / "state"))
    settings = settings_on(4, monkeypatch).model_copy(
        update={"auth_jwks_url": "http://127.0.0.1:5/jwks"}
    )
    missing = tmp_path / "not-started"
    with pytest.raises(SystemExit) as refused:
        run_dev(settings, missing, missing, 2, store, replicas=replicas)
    message = str(refused.value)
    assert "\n" not in message and f"REPLICAS={replicas}" in message
    if store == "sqlite":
        assert "needs STORE=postgres: SQLite is one file with one writer" in message
    assert not (tmp_path / "state").exists()  # nothing was touched
