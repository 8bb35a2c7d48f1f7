"""What a tool may receive by injection: its capability's store, the caller, record-level
access, and its own capability's Vault identity.

Injected parameters are invisible in the tool's input schema, so a client cannot supply them.
A tool gets its own capability's Vault identity and nothing else: never the server's token,
never another capability's identity, never the caller's bearer token. Which identity a component
asks for is checked when the server is built (``server.capability.registry``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from fastmcp import Context
from fastmcp.dependencies import CurrentContext

from server.authz.records import RecordAccess
from server.authz.request_context import current_principal, current_request
from server.capability.scope import current_capability
from server.edge.principal import Principal
from server.store.core import Store
from server.vault.identities import ToolIdentity

if TYPE_CHECKING:
    from server.runtime import Runtime


def get_runtime(ctx: Context = CurrentContext()) -> Runtime:
    return cast("Runtime", ctx.lifespan_context["runtime"])


def get_store(ctx: Context = CurrentContext()) -> Store:
    """The store of the capability that declared the running component.

    The component cannot choose: on PostgreSQL each capability's store connects as that
    capability's own database user, whose grants reach its own tables only (``server.store``).
    """
    return get_runtime(ctx).stores.of(current_capability())


def get_principal() -> Principal:
    """The caller the authorization middleware admitted; built from verified claims only."""
    return current_principal()


def get_record_access(ctx: Context = CurrentContext()) -> RecordAccess:
    """Record-level decisions for the caller, under the request's id, through the one PDP client."""
    info = current_request()
    if info is None or info.principal is None:
        raise LookupError("no authorized principal in this context")
    return RecordAccess(get_runtime(ctx).pdp, info.principal, info.request_id)


def tool_identity(name: str) -> Callable[..., ToolIdentity]:
    """``identity: ToolIdentity = Depends(tool_identity("tickets"))``: that Vault identity.

    Resolving it makes no Vault request; the identity mints, caches and re-mints its own
    short-lived token when an operation needs one.
    """

    def resolve(ctx: Context = CurrentContext()) -> ToolIdentity:
        return get_runtime(ctx).identities.tool(name)

    resolve.__name__ = f"tool_identity_{name}"
    resolve.__vault_identity__ = name  # type: ignore[attr-defined]  # read by the registry
    return resolve
