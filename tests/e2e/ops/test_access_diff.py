"""`make access-diff`: two real PDPs, one on a revision's policies and one on the working tree's,
and the differences in words, grants first.

Every test works on a temporary git repository holding a copy of policies/: the real policies/
is never edited. The grant and the revocations a test makes are chosen from the policy suites.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops.access_diff import WORKING_TREE, DiffError, diff
from ops.dev_issuer import demo_principals
from ops.policy_suites import POLICY_TESTS, component_matrix, fixtures, load_yaml
from server.settings import Settings
from tests.support import ROOT
from tools import CAPABILITIES

TOOLS = component_matrix("tool")
TOOL_FIXTURES = {f["id"]: f for f in fixtures()[0].values() if f["kind"] == "mcp_tool"}
DEMO = list(demo_principals())


def git(repo: Path, *args: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(repo.parent),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "access-diff test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "access-diff test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout


@pytest.fixture
def policy_repo(tmp_path: Path) -> Callable[..., Path]:
    """A git repository with a copy of policies/ committed; ``edit`` runs before the commit."""

    def make(edit: Callable[[Path], None] | None = None) -> Path:
        repo = tmp_path / "repo"
        shutil.copytree(ROOT / "policies", repo / "policies")
        if edit is not None:
            edit(repo / "policies")
        git(repo, "init", "-q")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "policies under review")
        return repo

    return make


def edit_policy(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data["resourcePolicy"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def rule(name: str, effect: str, action: str, principal: str, resource_id: str) -> dict[str, Any]:
    """A rule for exactly one principal, one resource id and one action."""
    return {
        "name": name,
        "actions": [action],
        "effect": effect,
        "roles": ["*"],
        "condition": {
            "match": {
                "all": {
                    "of": [{"expr": f'P.id == "{principal}"'}, {"expr": f'R.id == "{resource_id}"'}]
                }
            }
        },
    }


def add_rules(path: Path, *rules: dict[str, Any]) -> None:
    edit_policy(path, lambda policy: policy["rules"].extend(rules))


def run_diff(cerbos: Path, repo: Path, ref: str = "HEAD") -> subprocess.CompletedProcess[str]:
    command = ["--env-file", "config/dev/dev.env", "access-diff", "--cerbos", str(cerbos)]
    return subprocess.run(
        [sys.executable, "-m", "ops", *command, "--repo", str(repo), ref],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"},
    )


def sections(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = found.setdefault(line.removeprefix("## "), [])
        elif line.startswith("- ") and current is not None:
            current.append(line.removeprefix("- "))
    return found


def a_record_allowed_by_the_suites() -> tuple[str, str, str, str]:
    """(principal, record kind, example id, action): the first ALLOW a record suite expects for
    a demo principal."""
    kind = CAPABILITIES[0].records[0].kind
    for suite_file in sorted(POLICY_TESTS.glob("*_test.yaml")):
        suite = load_yaml(suite_file)
        resources, _ = fixtures(suite)
        for test in suite["tests"]:
            for row in test["expected"]:
                fixture = resources[row["resource"]]
                allowed = [a for a, e in row["actions"].items() if e == "EFFECT_ALLOW"]
                if fixture["kind"] == kind and row["principal"] in DEMO and allowed:
                    return row["principal"], kind, fixture["id"], allowed[0]
    raise AssertionError(f"no suite allows a demo principal anything on a {kind}")


def test_the_diff_names_exactly_the_grant_and_the_revocations_grants_first(
    cerbos_bin: Path, policy_repo: Callable[..., Path]
) -> None:
    granted = next(
        (p, t)
        for p in DEMO
        for t in TOOLS.components
        if t in TOOL_FIXTURES
        and not TOOLS.allows(p, t, "call")
        and not TOOL_FIXTURES[t]["attr"]["destructive"]
    )
    revoked = next(
        (p, t) for p in reversed(DEMO) for t in TOOLS.components if TOOLS.allows(p, t, "list")
    )
    who, kind, example, action = a_record_allowed_by_the_suites()
    repo = policy_repo()
    add_rules(
        repo / "policies" / "mcp_tool.yaml",
        rule("review-grant", "EFFECT_ALLOW", "call", *granted),
        rule("review-revoke", "EFFECT_DENY", "list", *revoked),
    )
    add_rules(
        repo / "policies" / f"{kind}.yaml",
        rule("review-revoke", "EFFECT_DENY", action, who, example),
    )

    result = run_diff(cerbos_bin, repo)

    assert result.returncode == 0, result.stderr
    found = sections(result.stdout)
    assert list(found) == ["Grants", "Revocations"]
    assert found["Grants"] == [f"{granted[0]}: may now call {granted[1]}"]
    assert sorted(found["Revocations"]) == sorted(
        [
            f"{revoked[0]}: may no longer list {revoked[1]}",
            f"{who}: may no longer {action} {kind} record {example}",
        ]
    )
    assert result.stdout.index("## Grants") < result.stdout.index("## Revocations")


def test_a_policy_edit_that_changes_no_answer_is_no_change_in_access(
    cerbos_bin: Path, policy_repo: Callable[..., Path]
) -> None:
    repo = policy_repo()
    # Rewritten (comments dropped, layout changed) and a rule for nobody the review asks about.
    tool = next(iter(TOOL_FIXTURES))
    add_rules(
        repo / "policies" / "mcp_tool.yaml",
        rule("for-someone-else", "EFFECT_ALLOW", "call", "not_a_demo_principal", tool),
    )
    assert git(repo, "status", "--porcelain")

    text = diff(cerbos_bin, "HEAD", Settings(transport="stdio"), repo=repo)

    assert text.startswith("no change in access between HEAD (")
    assert WORKING_TREE in text
    assert len(text.splitlines()) == 1


def test_a_component_only_the_revision_knows_is_described_from_its_fixtures(
    cerbos_bin: Path, policy_repo: Callable[..., Path]
) -> None:
    model = next(
        t for t in TOOLS.components if t in TOOL_FIXTURES and TOOLS.allowed.get(DEMO[0], {}).get(t)
    )
    users = {p for p in DEMO if TOOLS.allowed.get(p, {}).get(model)}

    def with_retired_tool(policies: Path) -> None:
        testdata = policies / "tests" / "testdata" / "resources.yaml"
        data = yaml.safe_load(testdata.read_text())
        attr = {**TOOL_FIXTURES[model]["attr"], "name": "retired_tool"}
        data["resources"]["tool_retired_tool"] = {
            "kind": "mcp_tool",
            "id": "retired_tool",
            "attr": attr,
        }
        testdata.write_text(yaml.safe_dump(data, sort_keys=False))
        edit_policy(
            policies / "mcp_tool.yaml",
            lambda policy: policy["constants"]["local"]["released"].append("retired_tool"),
        )

    repo = policy_repo(with_retired_tool)
    shutil.rmtree(repo / "policies")
    shutil.copytree(ROOT / "policies", repo / "policies")  # the working tree: as it is today

    text = diff(cerbos_bin, "HEAD", Settings(transport="stdio"), repo=repo)

    found = sections(text)
    assert list(found) == ["Revocations"], text
    note = "(only at HEAD)"
    revoked = {line.split(":")[0] for line in found["Revocations"]}
    assert revoked, text
    assert revoked <= users
    for line in found["Revocations"]:
        assert " retired_tool " in f"{line} " and line.endswith(note), line


def test_policies_that_do_not_compile_are_named_in_one_line(
    cerbos_bin: Path, policy_repo: Callable[..., Path]
) -> None:
    repo = policy_repo()
    (repo / "policies" / "mcp_tool.yaml").write_text(
        "apiVersion: api.cerbos.dev/v1\nresourcePolicy: [\n"
    )

    result = run_diff(cerbos_bin, repo)

    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"access-diff: the policies of {WORKING_TREE} do not compile: ")


def test_an_unknown_revision_is_refused(cerbos_bin: Path, policy_repo: Callable[..., Path]) -> None:
    repo = policy_repo()
    with pytest.raises(DiffError, match="unknown git revision 'no-such-branch'"):
        diff(cerbos_bin, "no-such-branch", Settings(transport="stdio"), repo=repo)
    with pytest.raises(DiffError, match="not a git revision"):
        diff(cerbos_bin, "--output=x", Settings(transport="stdio"), repo=repo)
