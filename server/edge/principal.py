"""Who is calling: the principal, built only from verified token claims (or explicit stdio config).

Parsing is strict: a claim of the wrong type or shape makes the whole token unusable rather than
being coerced or dropped, so a malformed identity can never widen what a caller may do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)

Name = Annotated[StrictStr, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
PrincipalId = Annotated[
    StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:|-]{0,127}$")
]


class Principal(BaseModel):
    """The caller as the policies see it: id, roles and the attributes policies may use."""

    # Scalars are strict (no "true" -> True, no 1.5 -> 1); JSON arrays become the tuples.
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: PrincipalId
    roles: tuple[Name, ...] = Field(min_length=1, max_length=16)
    department: Name
    teams: tuple[Name, ...] = Field(default=(), max_length=32)
    mfa: StrictBool = False
    refund_limit: Annotated[StrictInt, Field(ge=0, le=10_000_000)] = 0

    def policy_attributes(self) -> dict[str, Any]:
        """Attributes sent to the PDP: exactly what policies use, nothing else from the token."""
        return {
            "department": self.department,
            "teams": list(self.teams),
            "mfa": self.mfa,
            "refund_limit": self.refund_limit,
        }


class InvalidClaims(ValueError):
    """The token verified but does not describe a usable principal."""


# Token claim name -> principal field. Standard `sub` is the id; the rest are custom claims
# your identity provider must emit (see docs/security-edge.md, "Your identity provider").
CLAIM_TO_FIELD = {
    "sub": "id",
    "roles": "roles",
    "department": "department",
    "teams": "teams",
    "mfa": "mfa",
    "refund_limit": "refund_limit",
}


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """Build the principal from verified claims; anything else in the token is ignored."""
    data: dict[str, Any] = {}
    for claim, field in CLAIM_TO_FIELD.items():
        if claim in claims:
            data[field] = claims[claim]
    try:
        return Principal.model_validate(data)
    except ValidationError as exc:
        fields = sorted({str(err["loc"][0]) for err in exc.errors() if err["loc"]})
        raise InvalidClaims(
            f"token claims do not describe a principal: {', '.join(fields)}"
        ) from None
