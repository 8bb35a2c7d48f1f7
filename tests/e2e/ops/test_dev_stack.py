"""``make dev`` never loses data: a second one is refused before it touches anything, the running
one keeps serving, and after a stop and a start the data is still there and still decrypts.

The real ``python -m ops dev`` with the real PDP and OpenBao binaries, on free ports moved by the
documented variables, with HOME and the state directory (DEV_STATE_DIR) in a temporary folder.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.ports import port_is_free
from tests.e2e.ops.dev_process import DevStack, dev_environment, free_dev_ports
from tests.support import find_canaries
from tools.accounts.seed import ROWS

VARIABLE_OF_SERVICE = {
    "PORT": "MCP server",
    "PDP_GRPC_PORT": "Cerbos PDP gRPC",
    "PDP_HTTP_PORT": "Cerbos PDP HTTP",
    "OPENBAO_PORT": "OpenBao",
    "ISSUER_PORT": "dev token issuer",
}


@pytest.fixture
def stack(tmp_path: Path, cerbos_bin: Path, bao_bin: Path) -> Iterator[DevStack]:
    dev = DevStack(tmp_path, cerbos_bin, bao_bin, dev_environment(tmp_path, free_dev_ports()))
    yield dev
    dev.stop()


def snapshot(state: Path) -> dict[str, bytes]:
    """Every file of the state directory with its content; OpenBao's raft files may change on
    their own, so for them only presence counts."""
    return {
        str(path.relative_to(state)): (b"" if "vault/raft/" in str(path) else path.read_bytes())
        for path in sorted(state.rglob("*"))
        if path.is_file()
    }


def untouched(before: dict[str, bytes], after: dict[str, bytes]) -> bool:
    """The same files with the same content; the running stack's logs may only have grown."""
    return before.keys() == after.keys() and all(
        after[name].startswith(content) if name.endswith(".log") else after[name] == content
        for name, content in before.items()
    )


def one_line_refusal(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


async def test_a_second_make_dev_is_refused_and_a_restart_keeps_the_data(stack: DevStack) -> None:
    stack.start()
    async with stack.client("alice") as alice:
        created = await alice.call_tool(
            "create_ticket", {"title": "Kept across restarts", "team": "tier1"}
        )
    ticket_id = created.structured_content["id"]  # type: ignore[index]
    before = snapshot(stack.state)
    assert "data/template.db" in before and "vault/root-token" in before

    # The same ports: refused with one line naming each busy port and its variable.
    second = stack.run_ops(*stack.dev_args())
    assert second.returncode != 0
    refusal = one_line_refusal(second.stderr)
    for variable, service in VARIABLE_OF_SERVICE.items():
        assert f"{stack.env[variable]} ({service}" in refusal and f"{variable}=" in refusal

    # Other ports, same state directory: refused by the state lock, again in one line.
    elsewhere = {**stack.env, **free_dev_ports()}
    third = stack.run_ops(*stack.dev_args(), env=elsewhere)
    assert third.returncode != 0
    assert "is using" in one_line_refusal(third.stderr)
    assert all(port_is_free(int(elsewhere[v])) for v in VARIABLE_OF_SERVICE)  # nothing started

    # Neither could clean the running stack's state.
    clean = stack.run_ops("clean")
    assert clean.returncode != 0 and "stop it first" in one_line_refusal(clean.stderr)

    assert untouched(before, snapshot(stack.state))
    async with stack.client("alice") as alice:
        still = await alice.call_tool("get_ticket", {"ticket_id": ticket_id})
    assert still.structured_content["title"] == "Kept across restarts"  # type: ignore[index]

    assert stack.stop() == 0
    assert all(port_is_free(int(stack.env[v])) for v in VARIABLE_OF_SERVICE)
    stack.start()
    async with stack.client("alice") as alice:
        again = await alice.call_tool("get_ticket", {"ticket_id": ticket_id})
    assert again.structured_content["title"] == "Kept across restarts"  # type: ignore[index]
    # Contact details were encrypted with a transit key of the first run: they still decrypt.
    async with stack.client("carol") as carol:
        account = (await carol.call_tool("get_account", {"account_id": 1})).structured_content
    assert account is not None and account["pii_masked"] is False
    assert account["email"] == ROWS[0][4]
    assert list(stack.state.glob("data/*.set-aside-*")) == []


async def test_the_dev_openbao_log_holds_neither_the_root_token_nor_the_unseal_key(
    stack: DevStack,
) -> None:
    stack.start()
    assert stack.stop() == 0
    stack.start()  # a restart unseals from the key file: still nothing in the log
    vault = stack.state / "vault"
    root_token = (vault / "root-token").read_text().strip()
    unseal_key = (vault / "unseal.key").read_bytes()
    launcher = (vault / "stdio-launcher-token").read_text().strip()
    assert root_token and len(unseal_key) == 32
    for secret_file in ("root-token", "unseal.key", "stdio-launcher-token"):
        assert (vault / secret_file).stat().st_mode & 0o777 == 0o600
    logs = [
        (str(path.relative_to(stack.base)), path.read_bytes().decode("latin-1"))
        for path in [*stack.state.rglob("*.log"), *stack.base.glob("dev-*.*")]
    ]
    assert any(name.endswith("vault/bao.log") and "OpenBao server started" in t for name, t in logs)
    secrets_ = [root_token, launcher, unseal_key.hex(), base64.b64encode(unseal_key).decode()]
    assert find_canaries(logs, secrets_) == []
    assert not any(unseal_key in path.read_bytes() for path in stack.state.rglob("*.log"))
