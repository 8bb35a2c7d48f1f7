"""The Cerbos policy suites (``policies/tests/``) read as data: the single source of who may do
what, for tests, generated tables and reports.

The first test of each component suite (``mcp_tool``, ``mcp_resource``, ``mcp_prompt``) is the
full matrix: every demo principal, every component (a resource group that the generated fixtures
keep equal to the registered components), every action; it lists the ALLOWs, and Cerbos expects
DENY for everything it does not list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parent.parent
POLICY_TESTS: Final = ROOT / "policies" / "tests"
FIXTURES: Final = POLICY_TESTS / "testdata"

# Component suite file, and the action that means "use it", per component type.
COMPONENT_SUITES: Final = {
    "tool": ("mcp_tool_test.yaml", "call"),
    "resource": ("mcp_resource_test.yaml", "read"),
    "prompt": ("mcp_prompt_test.yaml", "get"),
}


@dataclass
class Matrix:
    """The ALLOW matrix of a policy suite: principal -> component id -> allowed actions."""

    allowed: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    principals: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    def allows(self, principal: str, component: str, action: str) -> bool:
        return action in self.allowed.get(principal, {}).get(component, set())

    def allowed_for(self, principal: str, action: str) -> list[str]:
        """The components ``principal`` may ``action``, in suite order."""
        return [c for c in self.components if self.allows(principal, c, action)]


# libyaml's loader when PyYAML has it: the same documents, read several times faster.
_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_LOADER)  # noqa: S506 - a safe loader
    return data if isinstance(data, dict) else {}


def dump_yaml(data: Any) -> str:
    """The layout the suites are kept in (a load and a dump reproduce them exactly)."""
    return yaml.safe_dump(data, sort_keys=False, width=120, default_flow_style=None)


def fixtures(
    suite: dict[str, Any] | None = None, *, testdata: Path = FIXTURES
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Resource fixtures and resource groups: the shared testdata plus a suite's own.

    ``testdata``: the suites' shared fixtures directory (another revision's, for a diff).
    """
    path = testdata / "resources.yaml"
    shared = load_yaml(path) if path.exists() else {}
    resources = {**shared.get("resources", {}), **((suite or {}).get("resources") or {})}
    groups = {
        name: list(group["resources"])
        for source in (shared, suite or {})
        for name, group in (source.get("resourceGroups") or {}).items()
    }
    return resources, groups


def matrix(suite_file: str) -> Matrix:
    """The full matrix (first test) of a suite, keyed by component id (not fixture key)."""
    suite = load_yaml(POLICY_TESTS / suite_file)
    resources, groups = fixtures(suite)
    test = suite["tests"][0]
    keys = [key for group in test["input"].get("resourceGroups", []) for key in groups[group]]
    keys += list(test["input"].get("resources", []))
    result = Matrix(
        principals=list(test["input"]["principals"]),
        components=[resources[key]["id"] for key in keys],
        actions=list(test["input"]["actions"]),
    )
    for row in test["expected"]:
        ident = resources[row["resource"]]["id"]
        actions = {a for a, effect in row["actions"].items() if effect == "EFFECT_ALLOW"}
        result.allowed.setdefault(row["principal"], {})[ident] = actions
    return result


def component_matrix(component_type: str) -> Matrix:
    return matrix(COMPONENT_SUITES[component_type][0])
