"""Scaffolding: ``make new-tool name=<tool> capability=<capability>`` and ``make new-capability
name=<capability> [identity=yes]``.

A new tool is secure by default: it is listed and callable by admins only, because the tool gate's
department rules apply only to the tools ``policies/mcp_tool.yaml`` lists as ``released``. So the
scaffold writes no policy rule (the ``admin`` rule already covers the tool, and it says so); it
writes the tool, its declaration and example arguments, registers it in its capability, adds the
expectations for every principal of the policy suite (admins allowed, everyone else denied), and
regenerates what is generated (the suite's component fixtures, Vault policies, the README table).
``make test`` passes right after it.
"""

from __future__ import annotations

import ast
import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ops.policy_suites import FIXTURES, POLICY_TESTS, ROOT, dump_yaml, load_yaml

TOOLS_DIR: Final = ROOT / "tools"
TOOL_SUITE: Final = POLICY_TESTS / "mcp_tool_test.yaml"
NAME: Final = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
KINDS: Final = {"read": "READ_ONLY", "write": "WRITES", "destructive": "DESTRUCTIVE"}


class ScaffoldError(ValueError):
    """The request cannot be scaffolded; the message says why, in one line."""


@dataclass
class Changes:
    """What a scaffold did, file by file, and what the developer should know."""

    written: list[Path] = field(default_factory=list)
    edited: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def files(self) -> list[str]:
        out = [f"wrote {p.relative_to(ROOT)}" for p in self.written]
        return out + [f"edited {p.relative_to(ROOT)}" for p in self.edited]


# --- new tool ----------------------------------------------------------------------------------


def new_tool(name: str, capability: str, *, kind: str = "read") -> Changes:
    _check_name(name, "tool")
    _check_name(capability, "capability")
    if kind not in KINDS:
        raise ScaffoldError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
    if name in _registered_tool_names():
        raise ScaffoldError(f"a tool named {name!r} is already registered")
    changes = Changes()
    package = TOOLS_DIR / capability
    if not package.exists():
        changes = new_capability(capability, identity=False)
    module = package / f"{name}.py"
    if module.exists():
        raise ScaffoldError(f"{module.relative_to(ROOT)} already exists")
    department = _department_of(capability)
    module.write_text(_tool_module(name, capability, department, kind))
    changes.written.append(module)
    init = package / "__init__.py"
    _register_tool(init, capability, name)
    changes.edited.append(init)
    _add_suite_expectations(name, destructive=kind == "destructive")
    changes.edited.append(TOOL_SUITE)
    changes.notes += [
        "",
        f"policies/mcp_tool.yaml: no rule written. The rule `admin` already lets admins list and "
        f"call {name}; the department rules apply only to tools listed in `released` there, so "
        "nobody else may until you add it.",
        f"To open {name} to others: add it to `released` in policies/mcp_tool.yaml (the rules "
        f"then decide by its declaration: department {department}, {kind}, internal), update its "
        "expectations in policies/tests/mcp_tool_test.yaml, and run `make policy-test`.",
        f"Then write the tool itself in {module.relative_to(ROOT)} (its docstring is what the "
        "model reads) and keep its example arguments valid.",
    ]
    return changes


def _tool_module(name: str, capability: str, department: str, kind: str) -> str:
    result = "".join(part.capitalize() for part in name.split("_")) + "Result"
    return f'''"""{name}: one tool of the {capability} capability (written by `make new-tool`).

Listed and callable by admins only until policies/mcp_tool.yaml releases it.
"""

from __future__ import annotations

from typing import Annotated

from fastmcp.tools import tool
from pydantic import BaseModel, Field

from server.capability import {KINDS[kind]}


class {result}(BaseModel):
    message: str


@tool(
    tags={{"{capability}"}},
    meta={{"department": "{department}", "sensitivity": "internal"}},
    annotations={KINDS[kind]},
)
async def {name}(
    text: Annotated[str, Field(description="Text to echo back.", min_length=1, max_length=200)],
) -> {result}:
    """Echo the text back. Replace this with what the tool does, written for the model."""
    return {result}(message=text)
'''


def _register_tool(init: Path, capability: str, name: str) -> None:
    source = init.read_text()
    call = _capability_call(source, init)
    edits: list[tuple[int, str]] = []
    tools = _keyword(call, "tools")
    examples = _keyword(call, "examples")
    if not isinstance(tools, ast.List) or not isinstance(examples, ast.Dict):
        raise ScaffoldError(f"{init.relative_to(ROOT)}: `tools=[...]` and `examples={{...}}` "
                            "must be literal lists and dicts to be edited")  # fmt: skip
    edits.append((_before_closing(source, tools), f"{name}, "))
    edits.append((_before_closing(source, examples), f'"{name}": {{"text": "hello"}}, '))
    edits.append((_after_imports(source), f"from tools.{capability}.{name} import {name}\n"))
    _apply(init, source, edits)


# --- new capability ----------------------------------------------------------------------------


def new_capability(name: str, *, identity: bool, department: str | None = None) -> Changes:
    _check_name(name, "capability")
    package = TOOLS_DIR / name
    if package.exists():
        raise ScaffoldError(f"tools/{name} already exists")
    department = department or name
    package.mkdir()
    init = package / "__init__.py"
    init.write_text(_capability_module(name, department, identity=identity))
    changes = Changes(written=[init])
    registry = TOOLS_DIR / "__init__.py"
    _register_capability(registry, name)
    changes.edited.append(registry)
    changes.notes.append(
        f"tools/{name}: department {department!r} owns its components (the tool gate's "
        "department rules compare it with the caller's)."
    )
    if identity:
        changes.notes.append(
            f"Vault identity {name!r}: policy mcp-{name} (generated into "
            f"config/vault/policies/mcp-{name}.hcl), token role mcp-{name} and the KV secret "
            f"tools/{name}/config, created by the bootstrap; `make identities` lists it."
        )
    return changes


def _capability_module(name: str, department: str, *, identity: bool) -> str:
    vault_import = ", VaultNeeds, random_secret" if identity else ""
    vault = (
        f'    vault=VaultNeeds(\n        identity="{name}",\n'
        f'        secrets={{"tools/{name}/config": {{"api_key": random_secret}}}},\n    ),\n'
        if identity
        else ""
    )
    usage = (
        f"\n\nIts tools take its Vault identity by injection and read its secret through it:\n\n"
        f'    identity: ToolIdentity = Depends(tool_identity("{name}"))\n'
        f'    secret = await identity.read_secret("tools/{name}/config")\n'
        if identity
        else ""
    )
    return f'''"""The {name} capability (written by `make new-capability`); department {department}.

Add tools with `make new-tool name=<tool> capability={name}`.{usage}"""

from server.capability import Capability{vault_import}

CAPABILITY = Capability(
    name="{name}",
    instructions="{name.capitalize()}: describe here, in one sentence, what these tools are for.",
    tools=[],
    examples={{}},
{vault})
'''


def _register_capability(registry: Path, name: str) -> None:
    source = registry.read_text()
    tree = ast.parse(source)
    target = next(
        (
            node.value
            for node in tree.body
            if isinstance(node, ast.AnnAssign | ast.Assign)
            and "CAPABILITIES"
            in ast.unparse(node.targets[0] if isinstance(node, ast.Assign) else node.target)
        ),
        None,
    )
    if not isinstance(target, ast.Tuple | ast.List):
        raise ScaffoldError("tools/__init__.py: CAPABILITIES must be a literal tuple or list")
    alias = name.upper()
    edits = [
        (_before_closing(source, target), f"{alias}, "),
        (_after_imports(source), f"from tools.{name} import CAPABILITY as {alias}\n"),
    ]
    _apply(registry, source, edits)


# --- the policy suite ----------------------------------------------------------------------------


def _add_suite_expectations(name: str, *, destructive: bool) -> None:
    """Every principal of the suite's matrix gets an explicit expectation for the new tool:
    admins may list it and call it (a destructive call needs MFA), everyone else is denied."""
    suite = load_yaml(TOOL_SUITE)
    principals = load_yaml(FIXTURES / "principals.yaml")["principals"]
    matrix = suite["tests"][0]
    key = f"tool_{name}"
    new_rows = {}
    for principal in matrix["input"]["principals"]:
        spec = principals[principal]
        admin = "admin" in spec.get("roles", [])
        call = admin and (not destructive or spec.get("attr", {}).get("mfa") is True)
        new_rows[principal] = {
            "principal": principal,
            "resource": key,
            "actions": {
                "list": "EFFECT_ALLOW" if admin else "EFFECT_DENY",
                "call": "EFFECT_ALLOW" if call else "EFFECT_DENY",
            },
        }
    expected: list[dict[str, Any]] = []
    for principal in matrix["input"]["principals"]:
        expected += [row for row in matrix["expected"] if row["principal"] == principal]
        expected.append(new_rows[principal])
    expected += [row for row in matrix["expected"] if row["principal"] not in new_rows]
    matrix["expected"] = expected
    header = "".join(line for line in TOOL_SUITE.read_text().splitlines(True) if line[:1] == "#")
    TOOL_SUITE.write_text(header + dump_yaml(suite))


# --- helpers --------------------------------------------------------------------------------------


def _check_name(name: str, what: str) -> None:
    if not NAME.match(name) or keyword.iskeyword(name):
        raise ScaffoldError(f"{what} name {name!r}: use lowercase letters, digits and _ (2-40)")


def _registered_tool_names() -> set[str]:
    from server.capability.declaration import component_name
    from tools import CAPABILITIES

    return {component_name(fn) for c in CAPABILITIES for fn in c.tools}


def _department_of(capability: str) -> str:
    """The department the capability's existing components declare, else the capability's."""
    from tools import CAPABILITIES

    for registered in CAPABILITIES:
        if registered.name == capability:
            for fn in (*registered.tools, *registered.resources, *registered.prompts):
                meta = getattr(getattr(fn, "__fastmcp__", None), "meta", None) or {}
                if isinstance(meta.get("department"), str):
                    return str(meta["department"])
    init = (TOOLS_DIR / capability / "__init__.py").read_text()
    found = re.search(r"; department (\w+)\.", init)
    return found.group(1) if found else capability


def _capability_call(source: str, path: Path) -> ast.Call:
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign | ast.AnnAssign)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func).endswith("Capability")
        ):
            return node.value
    raise ScaffoldError(f"{path.relative_to(ROOT)} has no `CAPABILITY = Capability(...)`")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _offset(source: str, line: int, column: int) -> int:
    lines = source.splitlines(keepends=True)
    return sum(len(text) for text in lines[: line - 1]) + column


def _before_closing(source: str, node: ast.expr) -> int:
    """Where to insert an element: just before the node's closing bracket."""
    assert node.end_lineno is not None
    assert node.end_col_offset is not None
    return _offset(source, node.end_lineno, node.end_col_offset) - 1


def _after_imports(source: str) -> int:
    tree = ast.parse(source)
    last = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)][-1]
    assert last.end_lineno is not None
    return _offset(source, last.end_lineno + 1, 0)


def _apply(path: Path, source: str, edits: list[tuple[int, str]]) -> None:
    """Insert texts at offsets (from the end, so earlier offsets stay valid), then format."""
    for offset, text in sorted(edits, reverse=True):
        before = source[:offset].rstrip()
        separator = (
            "" if before.endswith(("[", "{", "(", ",", "\n")) or text.endswith("\n") else ", "
        )
        if text.endswith("\n"):
            source = source[:offset] + text + source[offset:]
        else:
            # A trailing comma after the last element keeps the collection one element a line.
            element = text.rstrip(", ") + ("," if before.endswith(",") else "")
            source = before + separator + element + source[offset:]
    path.write_text(source)
    _format(path)


def _format(path: Path) -> None:
    """ruff's import sorting and formatting, as `make lint` expects them."""
    import subprocess
    import sys

    ruff = Path(sys.executable).with_name("ruff")
    for args in (["check", "--fix", "--select", "I", "-q"], ["format", "-q"]):
        subprocess.run([str(ruff), *args, str(path)], check=True, cwd=ROOT)  # noqa: S603
