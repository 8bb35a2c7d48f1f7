"""The credential review: every Vault identity of the server, its policies, and what it can reach.

Everything comes from Vault itself, not from this repository: the AppRole and the token roles
(which policies each identity gets), the policies' rules as Vault stores them (which paths, which
capabilities), and Vault's own answer for a live token of each identity (``sys/capabilities-
accessor`` over every path any identity is granted), so a reviewer sees both what is declared
and what is effective, including that each identity is denied the others' paths.

Needs an admin token (it mints one token per identity and revokes it right after).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import hvac

from ops.vault_plan import SERVER_POLICY

_PATH_BLOCK = re.compile(r'path\s+"(?P<path>[^"]+)"\s*\{(?P<body>[^{}]*)\}', re.S)
_CAPABILITIES = re.compile(r"capabilities\s*=\s*\[(?P<caps>[^\]]*)\]")


@dataclass
class Grant:
    path: str
    declared: tuple[str, ...]
    effective: tuple[str, ...] = ()


@dataclass
class IdentityReport:
    identity: str
    via: str  # how the server obtains it
    policies: tuple[str, ...]
    default_policy: bool
    max_ttl: int
    grants: list[Grant] = field(default_factory=list)
    denied_elsewhere: int = 0  # other identities' paths this one is denied on
    reachable_elsewhere: list[Grant] = field(default_factory=list)


def parse_policy(hcl: str) -> list[Grant]:
    """``path "x" { capabilities = [...] }`` blocks; anything else in a policy is refused."""
    grants = []
    for block in _PATH_BLOCK.finditer(hcl):
        caps = _CAPABILITIES.search(block["body"])
        if caps is None:
            raise ValueError(f"policy block for {block['path']!r} has no capabilities")
        names = tuple(c.strip().strip('"') for c in caps["caps"].split(",") if c.strip())
        grants.append(Grant(block["path"], names))
    leftover = _PATH_BLOCK.sub("", re.sub(r"#[^\n]*", "", hcl)).strip()
    if leftover:
        raise ValueError(f"policy text this report cannot read: {leftover[:60]!r}")
    return grants


def read_identities(
    admin: hvac.Client,
    *,
    approle_mount: str = "approle",
    server_role: str = "mcp-server",
    role_prefix: str = "mcp-",
) -> list[IdentityReport]:
    reports: list[IdentityReport] = []
    role = admin.read(f"auth/{approle_mount}/role/{server_role}")["data"]
    reports.append(
        IdentityReport(
            identity="server",
            via=f"approle {server_role}",
            policies=tuple(role["token_policies"]),
            default_policy=not role["token_no_default_policy"],
            max_ttl=int(role["token_max_ttl"]),
        )
    )
    for name in sorted(admin.list("auth/token/roles")["data"]["keys"]):
        if not name.startswith(role_prefix) or name == SERVER_POLICY:
            continue
        token_role = admin.read(f"auth/token/roles/{name}")["data"]
        reports.append(
            IdentityReport(
                identity=name.removeprefix(role_prefix),
                via=f"token role {name}",
                policies=tuple(token_role["allowed_policies"]),
                default_policy=not token_role["token_no_default_policy"],
                max_ttl=int(token_role["token_explicit_max_ttl"]),
            )
        )
    for report in reports:
        for policy in report.policies:
            hcl = admin.read(f"sys/policies/acl/{policy}")["data"]["policy"]
            report.grants += parse_policy(hcl)
    _effective(admin, reports, approle_mount=approle_mount, server_role=server_role)
    return reports


def _effective(
    admin: hvac.Client, reports: list[IdentityReport], *, approle_mount: str, server_role: str
) -> None:
    every_path = sorted({g.path for r in reports for g in r.grants})
    for report in reports:
        accessor, cleanup = _live_token(admin, report, approle_mount, server_role)
        try:
            answer = admin.adapter.post(
                "/v1/sys/capabilities-accessor", json={"accessor": accessor, "paths": every_path}
            )
        finally:
            cleanup()
        caps: dict[str, Any] = answer["data"]
        own = {g.path for g in report.grants}
        for grant in report.grants:
            grant.effective = tuple(caps.get(grant.path, ()))
        for path in every_path:
            if path in own:
                continue
            reached = tuple(c for c in caps.get(path, ()) if c != "deny")
            if reached:
                report.reachable_elsewhere.append(Grant(path, (), reached))
            else:
                report.denied_elsewhere += 1


def _live_token(
    admin: hvac.Client, report: IdentityReport, approle_mount: str, server_role: str
) -> tuple[str, Any]:
    """A real token of this identity, obtained the way the server obtains it, and its cleanup."""
    if report.identity == "server":
        issued = admin.auth.approle.generate_secret_id(server_role, mount_point=approle_mount)
        secret_id, secret_accessor = (
            issued["data"]["secret_id"],
            issued["data"]["secret_id_accessor"],
        )
        role_id = admin.auth.approle.read_role_id(server_role, mount_point=approle_mount)["data"][
            "role_id"
        ]
        auth = admin.auth.approle.login(
            role_id=role_id, secret_id=secret_id, use_token=False, mount_point=approle_mount
        )["auth"]

        def cleanup() -> None:
            admin.auth.token.revoke_accessor(auth["accessor"])
            admin.auth.approle.destroy_secret_id_accessor(
                server_role, secret_accessor, mount_point=approle_mount
            )

        return str(auth["accessor"]), cleanup
    auth = admin.auth.token.create(role_name=report.via.removeprefix("token role "), ttl="60s")[
        "auth"
    ]
    return str(auth["accessor"]), lambda: admin.auth.token.revoke_accessor(auth["accessor"])


def render(reports: list[IdentityReport]) -> str:
    header = ("IDENTITY", "OBTAINED THROUGH", "POLICIES", "PATH", "CAPABILITIES (EFFECTIVE)")
    rows: list[tuple[str, ...]] = []
    for report in reports:
        first = True
        for grant in report.grants:
            effective = ",".join(grant.effective) or "-"
            declared = ",".join(grant.declared)
            caps = effective if effective == declared else f"{effective} (declared {declared})"
            rows.append(
                (
                    report.identity if first else "",
                    report.via if first else "",
                    ",".join(report.policies) if first else "",
                    grant.path,
                    caps,
                )
            )
            first = False
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in (header, *rows)
    ]
    lines.append("")
    for report in reports:
        extra = ", ".join(f"{g.path} [{','.join(g.effective)}]" for g in report.reachable_elsewhere)
        lines.append(
            f"{report.identity}: default policy {'yes' if report.default_policy else 'no'}, "
            f"max TTL {report.max_ttl}s, denied on {report.denied_elsewhere} path(s) granted to "
            f"other identities" + (f"; ALSO REACHES {extra}" if extra else "")
        )
    return "\n".join(lines)
