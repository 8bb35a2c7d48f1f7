"""Asking the human before an action the policy marked ``requires_confirmation``.

On 2026-07-28 connections the tool returns an ``InputRequiredResult`` (an elicitation form), and
the client retries the same call with the answer, to this replica or another. Each retry re-runs
the whole authorization, so the decision is fresh. The question is bound to exactly one action
(``subject``) and one principal through the sealed ``request_state`` (sealed by the MCP SDK
under the key every replica shares, ``server.authz.request_state``), expires, and carries a
nonce that the tool stores in the same transaction as the action, in the shared database: an
accepted answer runs the action once, on whichever replica, and cannot be replayed or reused for
another amount. On older connections the server elicits in-line (within one connection, so
within one replica).

Decline, cancel, a wrong or stale answer, or a client that cannot ask: the action does not run.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from fastmcp import Context
from fastmcp.exceptions import ToolError
from mcp.types import ElicitRequest, ElicitRequestFormParams, InputRequiredResult
from pydantic import BaseModel, Field
from sqlalchemy import String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from server.edge.principal import Principal
from server.store.core import Base, utcnow

INPUT_KEY: Final = "confirm"
MAX_AGE_SECONDS: Final = 300
ALREADY_USED: Final = "This confirmation was already used. Nothing was changed."
FORM_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "confirm": {"type": "boolean", "title": "Confirm", "description": "Run it now?"}
    },
    "required": ["confirm"],
}


class ConfirmationUse(Base):
    """Each human confirmation runs its action once: its nonce is stored with the action."""

    __tablename__ = "confirmation_use"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    principal: Mapped[str] = mapped_column(String(128))
    used_at: Mapped[datetime] = mapped_column(default=utcnow)


class Confirmation(BaseModel):
    confirm: bool = Field(description="Run it now?")


@dataclass(frozen=True)
class Confirmed:
    """A human said yes. ``nonce`` is stored with the action to make the yes single-use."""

    nonce: str


async def spend_confirmation(
    session: AsyncSession, confirmed: Confirmed, *, subject: str, principal: Principal
) -> None:
    """Mark the confirmation used, in the transaction of the action it allows.

    A second use is refused here. Two concurrent uses (the same answer sent to two replicas at
    once) collide on the primary key: the nonce is written first, so the second transaction
    waits for the first and, once it committed, is refused the same way and rolls back.
    """
    if await session.get(ConfirmationUse, confirmed.nonce) is not None:
        raise ToolError(ALREADY_USED)
    session.add(ConfirmationUse(nonce=confirmed.nonce, subject=subject, principal=principal.id))
    try:
        await session.flush()
    except IntegrityError:
        raise ToolError(ALREADY_USED) from None


def not_confirmed(what: str) -> ToolError:
    return ToolError(f"Not confirmed: {what} was not run, and nothing was changed.")


async def ask_human(
    ctx: Context, principal: Principal, *, subject: str, question: str, what: str
) -> Confirmed | InputRequiredResult:
    """Return ``Confirmed`` once the human accepted, or the ``InputRequiredResult`` to ask them.

    ``subject`` identifies exactly what is being confirmed (e.g. ``refund:3:600.00``); ``what``
    names it for messages (e.g. "the refund").

    Raises ``ToolError`` when the answer is no, cannot be trusted, or cannot be obtained.
    """
    capabilities = ctx.session.client_capabilities
    if capabilities is None or capabilities.elicitation is None:
        raise ToolError(
            f"{what.capitalize()} needs a human to confirm it, and this client cannot ask "
            "(no elicitation support). Nothing was changed."
        )
    if ctx._is_modern_protocol():
        return _modern_round(ctx, principal, subject=subject, question=question, what=what)
    answer = await ctx.elicit(question, response_type=Confirmation)
    if answer.action == "accept" and isinstance(answer.data, Confirmation) and answer.data.confirm:
        return Confirmed(nonce=secrets.token_hex(16))
    raise not_confirmed(what)


def _modern_round(
    ctx: Context, principal: Principal, *, subject: str, question: str, what: str
) -> Confirmed | InputRequiredResult:
    response = (ctx.input_responses or {}).get(INPUT_KEY)
    if response is None:
        state = {
            "subject": subject,
            "principal": principal.id,
            "nonce": secrets.token_hex(16),
            "issued": time.time(),
        }
        form = ElicitRequestFormParams(message=question, requested_schema=FORM_SCHEMA)
        return InputRequiredResult(
            input_requests={INPUT_KEY: ElicitRequest(params=form)}, request_state=json.dumps(state)
        )
    state = _state(ctx.request_state)
    nonce, issued = state.get("nonce"), state.get("issued")
    if (
        state.get("subject") != subject
        or state.get("principal") != principal.id
        or not isinstance(nonce, str)
        or not isinstance(issued, int | float)
        or time.time() - issued > MAX_AGE_SECONDS
    ):
        raise ToolError(
            "This confirmation does not match the request or has expired. Nothing was changed."
        )
    content = getattr(response, "content", None) or {}
    if getattr(response, "action", None) == "accept" and content.get("confirm") is True:
        return Confirmed(nonce=nonce)
    raise not_confirmed(what)


def _state(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
