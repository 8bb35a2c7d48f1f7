"""The README tells the truth: its access table equals the policy suites, and its client snippet
runs against a real server."""

from __future__ import annotations

import contextlib
import io
import re
from typing import Any

from tests.support import ROOT, RunningServer, policy_matrix

README = (ROOT / "README.md").read_text()


def readme_table() -> dict[str, set[str]]:
    """component -> principals with a ✓ in the README's "Who can do what" table."""
    section = README.split("## Who can do what", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    columns = [re.findall(r"[a-z]+", cell.split("<br>")[0]) for cell in header[1:]]
    table = {}
    for line in rows[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        quoted = re.search(r"`([^`]+)`", cells[0])
        component = quoted.group(1) if quoted else cells[0]
        table[component] = {
            who
            for names, mark in zip(columns, cells[1:], strict=True)
            if mark == "✓"
            for who in names
        }
    return table


def test_readme_access_table_equals_the_policy_suites() -> None:
    expected: dict[str, set[str]] = {}
    for suite, action in (
        ("mcp_tool_test.yaml", "call"),
        ("mcp_resource_test.yaml", "read"),
        ("mcp_prompt_test.yaml", "get"),
    ):
        matrix = policy_matrix(suite)
        for component in matrix.components:
            allowed = {
                p
                for p in ("alice", "bob", "carol", "dave", "erin", "mallory")
                if matrix.allows(p, component, action)
            }
            if component not in ("drop_database", "secrets://all", "leak_everything"):
                expected[component] = allowed
    assert readme_table() == expected


async def test_readme_client_snippet_runs(server: RunningServer) -> None:
    snippet = README.split("```python\n", 1)[1].split("```", 1)[0]
    body, _, tail = snippet.rpartition("\n\n\ntoken = ")
    assert "asyncio.run(main(token))" in tail  # the part replaced below: getting a token via make
    namespace: dict[str, Any] = {}
    exec(body.replace('"http://127.0.0.1:8000/mcp"', repr(server.url)), namespace)  # noqa: S102 - our README
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        await namespace["main"](server.token("alice"))
    assert "'create_ticket'" in output.getvalue() and "'tickets'" in output.getvalue()
