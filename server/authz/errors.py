"""What callers are told when authorization says no or cannot answer, and how it is logged.

A denial must be indistinguishable from absence, so the "not found" errors here are exactly the
ones FastMCP itself produces for unknown components. ``AuthorizationUnavailable`` is the one
internal error for "the PDP gave no trustworthy answer"; its reason is what spans record.

Expected outcomes (not found, denied, invalid input) are answers, not failures: their exceptions
carry the ``ExpectedOutcome`` marker and are logged as one line at INFO, never with a traceback.
FastMCP logs every exception that leaves a resource or prompt function with its traceback (at
ERROR); ``quiet_expected_outcomes`` installs the one logging filter that turns the records of
marked exceptions into that single line.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, Literal, get_args

from fastmcp.exceptions import McpError, ToolError
from pydantic_core.core_schema import ErrorType

from server.authz.request_context import current_target

# JSON-RPC error codes (implementation-defined server range, plus the standard ones we mimic).
AUTHORIZATION_UNAVAILABLE: Final = -32001
NOT_AUTHORIZED: Final = -32003
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602

FailureReason = Literal["pdp_unavailable", "pdp_timeout", "invalid_reply", "invalid_request"]

# The loggers FastMCP reports component errors on (tools, resources, prompts).
FASTMCP_LOGGERS: Final = ("fastmcp.server.server", "fastmcp.prompts.function_prompt")


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


class ExpectedOutcome:
    """Marks an exception that tells the caller an expected outcome (not found, not permitted,
    invalid input): logged as one line at INFO, without a traceback."""


class ExpectedToolError(ExpectedOutcome, ToolError):
    """A ``ToolError`` for an expected outcome; FastMCP logs it at INFO without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message, log_level=logging.INFO)


class ComponentNotFound(ExpectedOutcome, McpError):
    """JSON-RPC "not found" for a resource or prompt (also raised from inside a resource)."""


class InvalidParams(ExpectedOutcome, McpError):
    """JSON-RPC "invalid params": arguments a component's declaration refuses."""

    def __init__(self, message: str) -> None:
        super().__init__(code=INVALID_PARAMS, message=message)


def not_found(component_type: Literal["tool", "resource", "prompt"], name: str) -> Exception:
    """Exactly what FastMCP answers for a component that does not exist."""
    if component_type == "tool":
        return ExpectedToolError(f"Unknown tool: {name!r}")
    if component_type == "resource":
        return ComponentNotFound(
            code=INVALID_PARAMS, message=f"Resource not found: {name!r}", data={"uri": name}
        )
    return ComponentNotFound(code=INVALID_PARAMS, message=f"Unknown prompt: {name!r}")


def resource_not_found() -> Exception:
    """ "Not found" for the resource URI the current request reads, exactly as it was sent: what
    a resource function raises for a record that is missing or that the caller may not view."""
    return not_found("resource", current_target())


class _ExpectedOutcomesOnOneLine(logging.Filter):
    """Drops the traceback of a record about an ``ExpectedOutcome`` and logs it at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if not record.exc_info:
            record.exc_info = None  # FastMCP passes exc_info=False for its one-line errors
        elif isinstance(exc, ExpectedOutcome):
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
        return True


_FILTER: Final = _ExpectedOutcomesOnOneLine()


def quiet_expected_outcomes(loggers: Any = FASTMCP_LOGGERS) -> None:
    """Install the filter on FastMCP's component loggers (idempotent)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


# --- invalid input: say which declared fields are wrong, never echo what was sent -------------

MAX_LISTED_PROBLEMS: Final = 5
_MAX_MESSAGE: Final = 160
# Pydantic's own messages describe the rule broken ("Input should be a valid integer"), never the
# input; custom validators' messages may quote it, so those are named by their type only.
_SAFE_MESSAGE_TYPES: Final = frozenset(get_args(ErrorType)) - {"value_error", "assertion_error"}


def invalid_arguments(
    what: str, declared: Collection[str], errors: Sequence[Mapping[str, Any]]
) -> str:
    """A bounded description of why arguments were refused, for the caller.

    ``errors`` are pydantic error details (``include_input=False``). Only parameters in
    ``declared`` are named; others (unexpected arguments, whatever their names) are counted. At
    most ``MAX_LISTED_PROBLEMS`` problems are described, so the answer's size does not grow with
    the request's.
    """
    problems: list[str] = []
    unexpected = 0
    others = 0
    for error in errors:
        location = error.get("loc") or ()
        field = location[0] if location else None
        if not isinstance(field, str) or field not in declared:
            unexpected += 1
            continue
        if len(problems) >= MAX_LISTED_PROBLEMS:
            others += 1
            continue
        path = ".".join([field, *(str(p) for p in location[1:] if isinstance(p, int))])
        kind = str(error.get("type", "invalid"))
        message = str(error.get("msg", "")) if kind in _SAFE_MESSAGE_TYPES else "invalid value"
        problems.append(f"{path}: {message[:_MAX_MESSAGE]}")
    if others:
        problems.append(f"{others} more")
    if unexpected:
        problems.append(
            f"{unexpected} unexpected argument{'s' if unexpected != 1 else ''} "
            f"(accepted: {', '.join(sorted(declared)) or 'none'})"
        )
    count = len(errors)
    return f"{count} validation error{'s' if count != 1 else ''} for {what}: " + "; ".join(problems)
