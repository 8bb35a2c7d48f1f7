"""Which capability the running component belongs to.

The registry records, for every tool, resource and prompt it registers, the capability that
declared it. This middleware (inside the authorization middleware: it runs only after an
ALLOW) binds that capability for the duration of the call, and ``get_store`` hands the component
that capability's store. A tool cannot name a store: it gets its own capability's, or none.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

_current: ContextVar[str | None] = ContextVar("mcp_capability", default=None)


@dataclass
class ComponentOwners:
    """Component -> the capability that declared it (filled by ``registry.register``)."""

    tools: dict[str, str] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)  # URI or URI template


def current_capability() -> str:
    """The capability of the component being run; raises outside a component's call."""
    name = _current.get()
    if name is None:
        raise LookupError("no capability component is running in this context")
    return name


class CapabilityScope(Middleware):
    def __init__(self, owners: ComponentOwners) -> None:
        self.owners = owners

    async def on_call_tool(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._within(self.owners.tools.get(context.message.name), context, call_next)

    async def on_get_prompt(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        owner = self.owners.prompts.get(context.message.name)
        return await self._within(owner, context, call_next)

    async def on_read_resource(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        uri = str(context.message.uri)
        owner = self.owners.resources.get(uri)
        if owner is None and context.fastmcp_context is not None:
            template = await context.fastmcp_context.fastmcp.get_resource_template(uri)
            if template is not None:
                owner = self.owners.resources.get(template.uri_template)
        return await self._within(owner, context, call_next)

    async def _within(
        self,
        owner: str | None,
        context: MiddlewareContext[Any],
        call_next: CallNext[Any, Any],
    ) -> Any:
        token = _current.set(owner)
        try:
            return await call_next(context)
        finally:
            _current.reset(token)
