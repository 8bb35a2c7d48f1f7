"""The credential review: every Vault identity of the server, its policies, and what it can reach.

Everything comes from Vault itself, not from this repository: the AppRole and the token roles
(which policies each identity gets), the policies' rules as Vault stores them (which paths, which
capabilities), and Vault's own answer for a live token of each identity (``sys/capabilities-
accessor`` over every path any identity is granted), so a reviewer sees both what is declared
and what is effective, including that each identity is denied the others' paths.

With a PostgreSQL store it also lists each database role: which identity may read its
credentials, the grants its creation statements declare, and the privileges a live login of
that role actually has in PostgreSQL (every table and sequence of the schema asked), so a
reviewer sees that a capability's login reaches its own tables and nothing else.

Needs an admin token (it mints one token, or login, per identity and revokes it right after).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import hvac
import hvac.exceptions

from ops.vault_plan import SERVER_POLICY

T = TypeVar("T")

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


# --- database roles (PostgreSQL stores) ----------------------------------------------------------

_GRANT = re.compile(
    r"^GRANT (?P<privileges>[A-Z, ]+) ON (?P<kind>TABLE|SEQUENCE|DATABASE) (?P<objects>.+) TO "
)


@dataclass
class DatabaseRoleReport:
    role: str
    read_by: tuple[str, ...]  # identities whose policy grants database/creds/<role>
    ttl: int
    declared: dict[str, tuple[str, ...]]  # object -> privileges, from the creation statements
    effective: dict[str, tuple[str, ...]] | None = None  # asked of PostgreSQL with a live login
    denied_tables: tuple[str, ...] = ()  # tables of the schema the live login may not touch


def parse_grants(statements: list[str]) -> dict[str, tuple[str, ...]]:
    """``GRANT ... ON TABLE/SEQUENCE/DATABASE a, b TO ...`` -> {"table a": (privileges), ...}."""
    grants: dict[str, tuple[str, ...]] = {}
    for statement in statements:
        found = _GRANT.match(statement.strip())
        if found is None:
            continue
        privileges = tuple(p.strip() for p in found["privileges"].split(","))
        for name in found["objects"].split(","):
            key = f"{found['kind'].lower()} {name.strip().strip(chr(34))}"
            grants[key] = tuple(sorted({*grants.get(key, ()), *privileges}))
    return grants


def read_database_roles(
    admin: hvac.Client, reports: list[IdentityReport], *, mount: str = "database"
) -> list[DatabaseRoleReport]:
    """Each database role Vault holds, who may read its credentials, and its grants: declared
    (the role's creation statements) and, when the database is reachable from here, effective
    (a live login asks PostgreSQL, then its lease is revoked)."""
    try:
        names = admin.list(f"{mount}/roles")["data"]["keys"]
    except (hvac.exceptions.InvalidPath, TypeError):
        return []  # no database engine: a single-identity store (SQLite)
    roles = []
    for name in sorted(names):
        role = admin.read(f"{mount}/roles/{name}")["data"]
        path = f"{mount}/creds/{name}"
        report = DatabaseRoleReport(
            role=name,
            read_by=tuple(r.identity for r in reports if any(g.path == path for g in r.grants)),
            ttl=int(role.get("default_ttl") or 0),
            declared=parse_grants(list(role.get("creation_statements") or [])),
        )
        _effective_grants(admin, mount, name, role, report)
        roles.append(report)
    return roles


def _effective_grants(
    admin: hvac.Client, mount: str, name: str, role: dict[str, Any], report: DatabaseRoleReport
) -> None:
    connection = admin.read(f"{mount}/config/{role['db_name']}")["data"]
    url = urlsplit(
        str(connection["connection_details"]["connection_url"])
        .replace("{{username}}", "u")
        .replace("{{password}}", "p")
    )
    issued = admin.secrets.database.generate_credentials(name=name, mount_point=mount)
    try:
        report.effective, report.denied_tables = _in_a_thread(
            _ask_postgres(
                host=url.hostname or "",
                port=url.port or 5432,
                database=url.path.lstrip("/"),
                user=issued["data"]["username"],
                password=issued["data"]["password"],
            )
        )
    except OSError:
        report.effective = None  # not reachable from here: declared grants only
    finally:
        admin.sys.revoke_lease(issued["lease_id"])


async def _ask_postgres(
    *, host: str, port: int, database: str, user: str, password: str
) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    import asyncpg

    conn = await asyncpg.connect(
        host=host, port=port, user=user, password=password, database=database, timeout=5
    )
    try:
        rows = await conn.fetch(
            "SELECT 'table ' || c.relname AS object, p.privilege FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE',"
            "'REFERENCES','TRIGGER']) AS p(privilege) "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' "
            "AND has_table_privilege(c.oid, p.privilege) "
            "UNION ALL SELECT 'sequence ' || c.relname, p.privilege FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN unnest(ARRAY['USAGE','SELECT','UPDATE']) AS p(privilege) "
            "WHERE n.nspname = 'public' AND c.relkind = 'S' "
            "AND has_sequence_privilege(c.oid, p.privilege) "
            "UNION ALL SELECT 'database ' || current_database(), p.privilege "
            "FROM unnest(ARRAY['CONNECT','CREATE','TEMPORARY']) AS p(privilege) "
            "WHERE has_database_privilege(current_database(), p.privilege) "
            "UNION ALL SELECT 'schema public', 'CREATE' "
            "WHERE has_schema_privilege('public', 'CREATE')"
        )
        tables = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1"
        )
    finally:
        await conn.close()
    effective: dict[str, set[str]] = {}
    for row in rows:
        effective.setdefault(str(row["object"]), set()).add(str(row["privilege"]))
    denied = tuple(str(t["relname"]) for t in tables if f"table {t['relname']}" not in effective)
    return {k: tuple(sorted(v)) for k, v in sorted(effective.items())}, denied


def _in_a_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def render_database_roles(roles: list[DatabaseRoleReport]) -> str:
    if not roles:
        return "No database roles: the store is single-identity (SQLite) or not bootstrapped."
    header = ("DATABASE ROLE", "CREDENTIALS READ BY", "OBJECT", "PRIVILEGES (EFFECTIVE)")
    rows: list[tuple[str, ...]] = []
    for role in roles:
        objects = sorted({*role.declared, *(role.effective or {})})
        for index, name in enumerate(objects):
            declared = ",".join(role.declared.get(name, ())) or "-"
            if role.effective is None:
                shown = f"{declared} (declared; database not reachable from here)"
            else:
                effective = ",".join(role.effective.get(name, ())) or "-"
                shown = effective if effective == declared else f"{effective} (declared {declared})"
            rows.append(
                (
                    role.role if index == 0 else "",
                    ",".join(role.read_by) or "-" if index == 0 else "",
                    name,
                    shown,
                )
            )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in (header, *rows)
    ]
    lines.append("")
    for role in roles:
        denied = ", ".join(role.denied_tables) or "none"
        lines.append(
            f"{role.role}: logins live {role.ttl}s at most (and die with the identity token that "
            f"obtained them); no privilege on the tables {denied}"
        )
    return "\n".join(lines)
