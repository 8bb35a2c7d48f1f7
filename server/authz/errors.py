"""What callers are told when authorization says no or cannot answer.

A denial must be indistinguishable from absence, so the "not found" errors here are exactly the
ones FastMCP itself produces for unknown components. ``AuthorizationUnavailable`` is the one
internal error for "the PDP gave no trustworthy answer"; its reason is what spans record.
"""

from __future__ import annotations

from typing import Final, Literal

from fastmcp.exceptions import McpError, ToolError

# JSON-RPC error codes (implementation-defined server range, plus the standard ones we mimic).
AUTHORIZATION_UNAVAILABLE: Final = -32001
NOT_AUTHORIZED: Final = -32003
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602

FailureReason = Literal["pdp_unavailable", "pdp_timeout", "invalid_reply", "invalid_request"]


class AuthorizationUnavailable(Exception):
    """The PDP could not give a trustworthy answer; callers must deny."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: FailureReason = reason
        self.detail = detail


UNAVAILABLE_MESSAGE: Final = (
    "Authorization unavailable: the policy decision point could not be reached, "
    "so nothing was run or changed. Try again shortly."
)


def not_found(component_type: Literal["tool", "resource", "prompt"], name: str) -> Exception:
    """Exactly what FastMCP answers for a component that does not exist."""
    if component_type == "tool":
        return ToolError(f"Unknown tool: {name!r}")
    if component_type == "resource":
        return McpError(
            code=INVALID_PARAMS, message=f"Resource not found: {name!r}", data={"uri": name}
        )
    return McpError(code=INVALID_PARAMS, message=f"Unknown prompt: {name!r}")
