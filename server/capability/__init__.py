"""What a capability builds on, in one import: its declaration, what its tools receive by
injection, and the result types and annotations they share.

    from server.capability import READ_ONLY, Capability, RecordAccess, get_record_access

A capability (``tools/<name>/``) imports the runtime only through this package.
"""

from server.authz.confirmation import Confirmed, ask_human, spend_confirmation
from server.authz.decisions import ResourceDecision, ResourceRef
from server.authz.errors import ExpectedToolError, resource_not_found
from server.authz.errors import not_found as component_not_found
from server.authz.records import (
    MISSING,
    NotPermitted,
    RecordAccess,
    RecordId,
    RecordNotFound,
    obligations,
)
from server.capability.declaration import (
    Capability,
    InvalidDeclaration,
    RecordPolicy,
    SeedContext,
    VaultNeeds,
    random_secret,
)
from server.capability.inject import get_principal, get_record_access, get_store, tool_identity
from server.capability.results import DESTRUCTIVE, READ_ONLY, WRITES, Deleted, Timestamp
from server.edge.principal import Principal
from server.store.core import Base, Store, utcnow
from server.vault.identities import KvSecret, ToolIdentity

__all__ = [
    "DESTRUCTIVE",
    "MISSING",
    "READ_ONLY",
    "WRITES",
    "Base",
    "Capability",
    "Confirmed",
    "Deleted",
    "ExpectedToolError",
    "InvalidDeclaration",
    "KvSecret",
    "NotPermitted",
    "Principal",
    "RecordAccess",
    "RecordId",
    "RecordNotFound",
    "RecordPolicy",
    "ResourceDecision",
    "ResourceRef",
    "SeedContext",
    "Store",
    "Timestamp",
    "ToolIdentity",
    "VaultNeeds",
    "ask_human",
    "component_not_found",
    "get_principal",
    "get_record_access",
    "get_store",
    "obligations",
    "random_secret",
    "resource_not_found",
    "spend_confirmation",
    "tool_identity",
    "utcnow",
]
