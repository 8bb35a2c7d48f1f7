"""`make access-report`: the answers of a real PDP, written as Markdown and JSON, equal what the
policy suites say for every principal, component and action, and for every record example; a
PDP that does not answer gives one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ops.access_report import COMPONENT_TYPES
from ops.dev_issuer import demo_principals
from ops.devstack import PDP, free_port
from ops.generate import UNREGISTERED_PROBES
from ops.policy_suites import POLICY_TESTS, component_matrix, fixtures, load_yaml
from server.authz.components import USE_ACTION
from tests.support import ROOT
from tools import CAPABILITIES

Decision = tuple[str, str, str, str]  # principal, resource kind, resource id, action


def run_report(address: str, out_dir: Path) -> subprocess.CompletedProcess[str]:
    command = ["--env-file", "config/dev/dev.env", "access-report", "--out-dir", str(out_dir)]
    return subprocess.run(
        [sys.executable, "-m", "ops", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "MCP_PDP_ADDRESS": address},
    )


def asks_confirmation(row: dict[str, Any], action: str) -> bool:
    """Whether a suite row expects a confirmation obligation on ``action``."""
    return any(
        expected["val"].get("requires_confirmation") is True
        for output in row.get("outputs", [])
        if output["action"] == action
        for expected in output["expected"]
    )


def record_expectations() -> tuple[dict[Decision, bool], set[Decision]]:
    """What the suites expect for the demo principals on every record fixture and tested action,
    and which ALLOWs they expect to carry a confirmation obligation."""
    kinds = {r.kind for c in CAPABILITIES for r in c.records}
    demo = set(demo_principals())
    expected: dict[Decision, bool] = {}
    confirmed: set[Decision] = set()
    for suite_file in sorted(POLICY_TESTS.glob("*_test.yaml")):
        suite = load_yaml(suite_file)
        resources, groups = fixtures(suite)
        for test in suite["tests"]:
            given = test["input"]
            keys = [k for g in given.get("resourceGroups", []) for k in groups[g]]
            keys += given.get("resources", [])
            rows = {(row["principal"], row["resource"]): row for row in test["expected"]}
            for who in demo & set(given["principals"]):
                for key in keys:
                    fixture = resources[key]
                    if fixture["kind"] not in kinds:
                        continue
                    row = rows.get((who, key), {})
                    for action in given["actions"]:
                        decision = (who, fixture["kind"], fixture["id"], action)
                        allowed = row.get("actions", {}).get(action) == "EFFECT_ALLOW"
                        assert expected.setdefault(decision, allowed) == allowed, decision
                        if allowed and asks_confirmation(row, action):
                            confirmed.add(decision)
    return expected, confirmed


@pytest.fixture(scope="module")
def report(pdp: PDP, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out_dir = tmp_path_factory.mktemp("access")
    before = datetime.now(UTC).replace(microsecond=0)
    result = run_report(pdp.grpc_address, out_dir)
    assert result.returncode == 0, result.stderr
    markdown, data = out_dir / "report.md", out_dir / "report.json"
    assert result.stdout.splitlines() == [str(markdown), str(data)]
    return {
        "json": json.loads(data.read_text()),
        "markdown": markdown.read_text(),
        "before": before,
        "after": datetime.now(UTC),
    }


def test_the_report_says_which_pdp_was_asked_and_when(pdp: PDP, report: dict[str, Any]) -> None:
    data = report["json"]
    assert data["pdp_address"] == pdp.grpc_address
    asked = datetime.fromisoformat(data["asked_at"].replace("Z", "+00:00"))
    assert report["before"] <= asked <= report["after"]
    assert f"`{pdp.grpc_address}` on {asked:%Y-%m-%d %H:%M:%S} UTC" in report["markdown"]


def test_the_report_asks_about_every_demo_principal(report: dict[str, Any]) -> None:
    assert list(report["json"]["principals"]) == list(demo_principals())


@pytest.mark.parametrize("component_type", COMPONENT_TYPES)
def test_every_component_decision_equals_the_policy_suite(
    report: dict[str, Any], component_type: str
) -> None:
    matrix = component_matrix(component_type)
    listed = [c for c in report["json"]["components"] if c["type"] == component_type]
    registered = [c for c in matrix.components if c not in UNREGISTERED_PROBES.values()]
    assert [c["id"] for c in listed] == registered
    checked = 0
    for component in listed:
        for principal, decisions in component["decisions"].items():
            assert list(decisions) == ["list", USE_ACTION[component_type]]
            for action, effect in decisions.items():
                wanted = matrix.allows(principal, component["id"], action)
                assert (effect == "ALLOW") == wanted, (principal, component["id"], action)
                checked += 1
    assert checked == len(registered) * len(demo_principals()) * 2


def test_every_record_example_decision_equals_the_policy_suites(report: dict[str, Any]) -> None:
    expected, confirmed = record_expectations()
    got: dict[Decision, str] = {
        (principal, record["kind"], record["example"], action): effect
        for record in report["json"]["records"]
        for principal, decisions in record["decisions"].items()
        for action, effect in decisions.items()
    }
    assert set(got) == set(expected)
    for decision, allowed in expected.items():
        assert (got[decision] != "DENY") == allowed, decision
    assert confirmed, "the suites expect some confirmation obligation"
    for decision in confirmed:
        assert got[decision] == "ALLOW_AFTER_CONFIRMATION", decision


def test_the_markdown_tables_show_the_same_decisions(report: dict[str, Any]) -> None:
    data = report["json"]
    names = list(data["principals"])
    rows = {}
    for line in report["markdown"].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = dict(zip(names, cells[-len(names) :], strict=True))
    for subject in [*data["components"], *data["records"]]:
        ident = subject.get("id") or subject["example"]
        for principal, decisions in subject["decisions"].items():
            allowed = [
                f"{a} (*confirm*)" if e == "ALLOW_AFTER_CONFIRMATION" else a
                for a, e in decisions.items()
                if e != "DENY"
            ]
            assert rows[ident][principal] == (", ".join(allowed) or "—"), (ident, principal)


def test_an_unreachable_pdp_gives_one_clear_line(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = run_report(address, tmp_path / "out")
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"access-report: cannot ask the PDP at {address}: ")
    assert "MCP_PDP_ADDRESS" in line
    assert not (tmp_path / "out").exists()
