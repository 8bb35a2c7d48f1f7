"""What a tool may receive by injection: the store and the authorized caller.

Injected parameters are invisible in the tool's input schema, so a client cannot supply them.
"""

from __future__ import annotations

from typing import cast

from fastmcp import Context
from fastmcp.dependencies import CurrentContext

from server.principal import Principal
from server.request_context import current_principal
from server.runtime import Runtime
from server.store import Store


def get_runtime(ctx: Context = CurrentContext()) -> Runtime:
    return cast(Runtime, ctx.lifespan_context["runtime"])


def get_store(ctx: Context = CurrentContext()) -> Store:
    return get_runtime(ctx).store


def get_principal() -> Principal:
    """The caller the authorization middleware admitted; built from verified claims only."""
    return current_principal()
