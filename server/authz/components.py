"""How MCP components (tools, resources, prompts) are presented to the PDP.

A component's policy attributes come only from its server-side declaration: its tags, its
annotations and two ``meta`` keys, ``department`` (the owning department) and ``sensitivity``.
Nothing the caller sends (arguments, ``_meta``, headers) is ever part of them.

Every component must declare both keys; ``require_policy_metadata`` refuses to start a server
where one does not, so a new tool cannot silently fall outside the policies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final, Literal

from fastmcp.prompts import Prompt
from fastmcp.resources import Resource, ResourceTemplate
from fastmcp.tools import Tool

from server.authz.decisions import ResourceRef

ComponentType = Literal["tool", "resource", "prompt"]

KIND: Final[dict[ComponentType, str]] = {
    "tool": "mcp_tool",
    "resource": "mcp_resource",
    "prompt": "mcp_prompt",
}
LIST_ACTION: Final = "list"
USE_ACTION: Final[dict[ComponentType, str]] = {"tool": "call", "resource": "read", "prompt": "get"}

SENSITIVITIES: Final = ("public", "internal", "confidential", "restricted")
# What an unregistered name is presented as, so that asking about it takes the same path
# (and the same time) as asking about a real component the caller may not use.
UNREGISTERED: Final = "unregistered"

# Names (and resource URIs) that may be sent to the PDP as resource ids. Registered components
# must match (checked at startup); an unregistered name that does not is sent as UNREGISTERED.
_NAME = re.compile(r"^[A-Za-z0-9_.:/{}-]{1,200}$")


class MissingPolicyMetadata(ValueError):
    pass


def is_plausible_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def tool_resource(tool: Tool) -> ResourceRef:
    annotations = tool.annotations
    read_only = bool(annotations and annotations.read_only_hint)
    # MCP's default for destructive_hint is true: a writing tool is destructive unless it says
    # otherwise, so an undeclared tool falls under the stricter rules.
    destructive = not read_only and not (annotations and annotations.destructive_hint is False)
    return ResourceRef(
        kind=KIND["tool"],
        id=tool.name,
        attributes=_attributes(tool.name, tool.tags, tool.meta, read_only, destructive),
    )


def resource_resource(component: Resource | ResourceTemplate) -> ResourceRef:
    ident = (
        component.uri_template if isinstance(component, ResourceTemplate) else str(component.uri)
    )
    return ResourceRef(
        kind=KIND["resource"],
        id=ident,
        attributes=_attributes(component.name, component.tags, component.meta, True, False),
    )


def prompt_resource(prompt: Prompt) -> ResourceRef:
    return ResourceRef(
        kind=KIND["prompt"],
        id=prompt.name,
        attributes=_attributes(prompt.name, prompt.tags, prompt.meta, True, False),
    )


def unregistered_resource(component_type: ComponentType, name: str) -> ResourceRef:
    ident = name if is_plausible_name(name) else UNREGISTERED
    return ResourceRef(
        kind=KIND[component_type],
        id=ident,
        attributes={
            "name": ident,
            "tags": [],
            "department": UNREGISTERED,
            "sensitivity": UNREGISTERED,
            "read_only": False,
            "destructive": False,
        },
    )


def _attributes(
    name: str, tags: Iterable[str], meta: dict[str, Any] | None, read_only: bool, destructive: bool
) -> dict[str, Any]:
    meta = meta or {}
    return {
        "name": name,
        "tags": sorted(tags),
        "department": meta.get("department"),
        "sensitivity": meta.get("sensitivity"),
        "read_only": read_only,
        "destructive": destructive,
    }


def require_policy_metadata(refs: Iterable[ResourceRef]) -> None:
    """Raise if any component lacks what the policies need to decide about it."""
    problems = []
    for ref in refs:
        attrs = ref.attributes
        if not is_plausible_name(ref.id):
            problems.append(f"{ref.kind} {ref.id!r}: name has characters the PDP check refuses")
        if not isinstance(attrs.get("department"), str) or not attrs["department"]:
            problems.append(f"{ref.kind} {ref.id!r}: meta['department'] is missing")
        if attrs.get("sensitivity") not in SENSITIVITIES:
            problems.append(
                f"{ref.kind} {ref.id!r}: meta['sensitivity'] must be one of {SENSITIVITIES}"
            )
    if problems:
        raise MissingPolicyMetadata("; ".join(problems))
