"""The scaffold refuses, in one line and before writing anything, what it cannot do safely.
(What it writes is proven end to end in tests/e2e/ops/test_scaffold.py.)"""

from __future__ import annotations

import subprocess

import pytest

from ops import scaffold
from ops.policy_suites import ROOT


def unchanged() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "tools", "policies"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.parametrize(
    ("name", "capability", "kind", "message"),
    [
        ("list_tickets", "tickets", "read", "already registered"),
        ("Bad-Name", "tickets", "read", "tool name 'Bad-Name'"),
        ("class", "tickets", "read", "tool name 'class'"),
        ("new_one", "../etc", "read", "capability name '../etc'"),
        ("new_one", "tickets", "delete", "kind must be one of"),
    ],
)
def test_a_request_it_cannot_honour_is_refused_before_anything_is_written(
    name: str, capability: str, kind: str, message: str
) -> None:
    before = unchanged()
    with pytest.raises(scaffold.ScaffoldError, match=message):
        scaffold.new_tool(name, capability, kind=kind)
    assert unchanged() == before


def test_an_existing_capability_is_not_scaffolded_again() -> None:
    with pytest.raises(scaffold.ScaffoldError, match="tools/tickets already exists"):
        scaffold.new_capability("tickets", identity=True)
