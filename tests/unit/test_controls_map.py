"""docs/controls.md maps every item of the security lists it covers to tests by node id: each
named test must exist (test files parsed with ast, nothing imported), and no item may be missing
or left without either tests or a plain "Not addressed"."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from tests.support import ROOT

CONTROLS = ROOT / "docs" / "controls.md"
NODE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]`]*\])?`")
ITEMS = (
    [f"MCP{n:02d}" for n in range(1, 11)]
    + [f"ASI{n:02d}" for n in range(1, 11)]
    + [f"NHI{n}" for n in range(1, 11)]
    + ["PR.AC-4"]
)


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """Names of the test functions a file defines, at module level or in test classes."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            names.add(node.name)
    return frozenset(names)


def rows() -> dict[str, str]:
    found = {}
    for line in CONTROLS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells and cells[0].split(" ")[0] in ITEMS:
            found[cells[0].split(" ")[0]] = line
    return found


def test_every_test_the_controls_map_names_exists() -> None:
    named = NODE.findall(CONTROLS.read_text())
    assert len(named) > 50
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not (ROOT / path).is_file() or name not in defined_tests(ROOT / path)
    ]
    assert missing == [], f"docs/controls.md names tests that do not exist: {missing}"


def test_every_item_is_mapped_to_tests_or_says_it_is_not_addressed() -> None:
    found = rows()
    assert sorted(found) == sorted(ITEMS)
    bare = [
        item
        for item, line in found.items()
        if not NODE.search(line) and "Not addressed" not in line
    ]
    assert bare == []


def test_the_parser_catches_a_renamed_test(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "def test_kept():\n    pass\n\n"
        "class TestX:\n    async def test_in_class(self):\n        pass\n"
    )
    assert defined_tests(sample) == {"test_kept", "test_in_class"}
    assert NODE.findall("`tests/a/test_b.py::test_c[erin]` and `tests/a/test_b.py::test_d`") == [
        ("tests/a/test_b.py", "test_c"),
        ("tests/a/test_b.py", "test_d"),
    ]
