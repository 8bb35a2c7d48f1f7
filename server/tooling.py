"""Building blocks shared by the tool modules (which never import each other).

- Annotations for the three kinds of tools: the policies read ``read_only`` and ``destructive``
  from them, so a tool declares exactly one of these.
- ``Deleted``: the result of a destructive tool.
- ``policy_attributes``: a stored row as the record-level policy sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from mcp.types import ToolAnnotations
from pydantic import BaseModel
from sqlalchemy.orm import InstrumentedAttribute

READ_ONLY: Final = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
WRITES: Final = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)
DESTRUCTIVE: Final = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)


class Deleted(BaseModel):
    id: int
    deleted: bool = True


def policy_attributes(
    row: Any, columns: Mapping[str, InstrumentedAttribute[Any]]
) -> dict[str, Any]:
    """``{policy attribute: value}`` for a row, from the attribute-to-column map of its kind."""
    return {name: getattr(row, column.key) for name, column in columns.items()}
