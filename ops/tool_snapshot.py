"""The reviewed tool snapshot (a rug-pull guard): ``tests/snapshots/tools.json`` holds every tool
exactly as the server lists it to ``dave`` (the admin, who may list every tool the policies
release): name, title, description, input and output schemas, annotations, and ``_meta`` with
the tags. A unit test compares the server's tools with it and fails on any difference until a
reviewer accepts it with ``make accept-tools`` (``python -m ops accept-tools``).

Why not ``make generate``: generated files are derived data nobody needs to read, so regenerating
them is always right. A tool's description and schemas are what an LLM client reads and trusts;
a change there (a new instruction in a description, a new parameter, a tool turning destructive)
must be looked at by a person. ``make generate`` never writes this file, and ``generate --check``
does not report it: accepting it is a separate, deliberate step whose diff shows in review.
``make new-tool`` records exactly the tool it wrote (``accept-tools --new NAME``), so the template's
promise holds that ``make test`` passes right after it; changes to existing tools still wait for
a reviewer. ``accept-tools --check`` lists the unreviewed differences.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Final

from fastmcp.tools import Tool
from fastmcp.utilities.json_schema import dereference_refs

from ops.policy_suites import ROOT, component_matrix
from server.app import create_server
from server.settings import Settings

SNAPSHOT: Final = ROOT / "tests" / "snapshots" / "tools.json"
ACCEPT: Final = "make accept-tools"
VIEWER: Final = "dave"


def current(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every tool ``VIEWER`` may list, in the wire form of ``tools/list``, sorted by name."""
    mcp = create_server(settings or Settings(transport="stdio"))
    tools = asyncio.run(mcp.list_tools(run_middleware=False))
    visible = set(component_matrix("tool").allowed_for(VIEWER, "list"))
    wire = [
        normalised(
            as_listed(tool).to_mcp_tool().model_dump(by_alias=True, exclude_none=True, mode="json")
        )
        for tool in tools
        if tool.name in visible
    ]
    return sorted(wire, key=lambda tool: str(tool["name"]))


def as_listed(tool: Tool) -> Tool:
    """What ``tools/list`` sends: FastMCP's default middleware inlines ``$ref``s in both schemas
    (the e2e test compares the result with a real listing)."""
    updates: dict[str, Any] = {"parameters": dereference_refs(tool.parameters)}
    if tool.output_schema is not None:
        updates["output_schema"] = dereference_refs(tool.output_schema)
    return tool.model_copy(update=updates)


def normalised(tool: dict[str, Any]) -> dict[str, Any]:
    """Tags are a set: recorded sorted, so their order never shows as a change."""
    tags = tool.get("_meta", {}).get("fastmcp", {}).get("tags")
    if isinstance(tags, list):
        tool["_meta"]["fastmcp"]["tags"] = sorted(tags)
    return tool


def render(tools: list[dict[str, Any]]) -> str:
    return json.dumps(tools, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def recorded(path: Path | None = None) -> list[dict[str, Any]]:
    path = path or SNAPSHOT
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else []


def differences(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """One line per tool added, removed or changed (naming the changed fields)."""
    before = {str(t["name"]): t for t in old}
    after = {str(t["name"]): t for t in new}
    lines = [f"added {name}" for name in sorted(after.keys() - before.keys())]
    lines += [f"removed {name}" for name in sorted(before.keys() - after.keys())]
    for name in sorted(before.keys() & after.keys()):
        fields = sorted(
            key
            for key in before[name].keys() | after[name].keys()
            if before[name].get(key) != after[name].get(key)
        )
        if fields:
            lines.append(f"changed {name} ({', '.join(fields)})")
    return lines


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def check() -> int:
    """Print the unreviewed differences; 1 if there are any."""
    changes = differences(recorded(), current())
    for line in changes:
        print(f"unreviewed: {line} (review it, then run `{ACCEPT}`)")
    return 1 if changes else 0


def accept_new(names: list[str]) -> int:
    """Record the named tools, which must be new (``make new-tool`` accepts the tool it wrote);
    every other difference still waits for a reviewer."""
    old = recorded()
    known = {str(t["name"]) for t in old}
    now = {str(t["name"]): t for t in current()}
    refused = [n for n in names if n in known or n not in now]
    if refused:
        print(f"accept-tools --new: not new tools of this server: {', '.join(refused)}")
        return 2
    SNAPSHOT.write_text(render(sorted([*old, *(now[n] for n in names)], key=lambda t: t["name"])))
    for name in names:
        print(f"accepted new tool {name} into {_shown(SNAPSHOT)}")
    return 0


def accept() -> int:
    """Write the snapshot from the server's tools; print what changed."""
    new = current()
    changes = differences(recorded(), new)
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(render(new))
    for line in changes:
        print(line)
    print(
        f"{_shown(SNAPSHOT)}: {len(new)} tools"
        + ("" if changes else " (no change)")
        + "; commit it with the change that caused it"
    )
    return 0
