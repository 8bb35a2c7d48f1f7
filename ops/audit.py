"""``make audit``: pip-audit over the installed dependency tree (the virtualenv ``make install``
builds from the exact pins of ``constraints.txt``).

Exit status: 0 when every installed package was checked and none has a known vulnerability;
1 when one has (each printed with its fixed versions); 2 when the check could not be made.

- pip-audit reports no severity, so any known vulnerability fails, which includes every HIGH or
  CRITICAL one. One that does not apply is accepted, with a reason, in ``config/audit-ignore.txt``
  (``ID  # why``); the list is reviewed like code.
- It never passes without checking. pip-audit's PyPI service asks a per-version JSON endpoint of
  the package index; where that endpoint is not served (a mirror or proxy may answer 404), pip-audit
  itself marks every package "not found on PyPI" and exits 0 with "No known vulnerabilities
  found". Here any package left unchecked is a failure, and all of them unchecked reads as what it
  is: the vulnerability database is unreachable. ``AUDIT_SERVICE=osv`` asks OSV instead.
- The project itself (installed editable) is not on any index and is skipped on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from ops.policy_suites import ROOT

IGNORE_FILE: Final = ROOT / "config" / "audit-ignore.txt"
SERVICES: Final = {"pypi": "the PyPI JSON API", "osv": "OSV"}


def ignored(path: Path = IGNORE_FILE) -> list[str]:
    if not path.exists():
        return []
    ids = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        entry, _, reason = line.partition("#")
        if not entry.strip():
            continue
        if not reason.strip():
            raise SystemExit(f"audit: {path.name}:{number}: {entry.strip()} has no reason")
        ids.append(entry.strip())
    return ids


def command(service: str, ignore: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip_audit",
        "--local",
        "--skip-editable",
        "--format=json",
        "--progress-spinner=off",
        "--desc=off",
        f"--vulnerability-service={service}",
        *(f"--ignore-vuln={vuln}" for vuln in ignore),
    ]


def verdict(report: dict[str, Any], service: str) -> tuple[int, list[str]]:
    """(exit status, lines to print) for a pip-audit JSON report."""
    where = SERVICES.get(service, service)
    deps = list(report.get("dependencies", []))
    skipped = [d for d in deps if d.get("skip_reason")]
    checked = [d for d in deps if not d.get("skip_reason")]
    if deps and not checked:
        return 2, [
            f"audit: the vulnerability database ({where}) is unreachable: it answered for none "
            f"of {len(deps)} packages (e.g. {skipped[0]['skip_reason']!r}); nothing was checked"
        ]
    if not deps:
        return 2, ["audit: pip-audit found no installed package to check; nothing was checked"]
    found = [
        f"{d['name']} {d.get('version', '?')}: {v['id']} (fixed in "
        f"{', '.join(v.get('fix_versions') or []) or 'no release yet'})"
        for d in checked
        for v in d.get("vulns", [])
    ]
    lines = [f"audit: {line}" for line in found]
    if skipped:
        names = ", ".join(f"{d['name']} {d.get('version', '?')}" for d in skipped[:10])
        lines.append(
            f"audit: {len(skipped)} of {len(deps)} packages could not be checked against "
            f"{where} ({names}{', ...' if len(skipped) > 10 else ''})"
        )
    if found:
        return 1, [*lines, f"audit: {len(found)} known vulnerabilities in {len(checked)} packages"]
    if skipped:
        return 2, lines
    return 0, [f"audit: {len(checked)} packages checked against {where}: no known vulnerability"]


def main(service: str | None = None) -> int:
    service = service or os.environ.get("AUDIT_SERVICE", "").strip() or "pypi"
    run = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        command(service, ignored()), capture_output=True, text=True, timeout=900, check=False
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        last = next(
            (line for line in reversed(run.stderr.splitlines()) if line.strip()), "no output"
        )
        print(
            f"audit: the vulnerability database ({SERVICES.get(service, service)}) is unreachable "
            f"or pip-audit failed: {last[:300]}",
            file=sys.stderr,
        )
        return 2
    status, lines = verdict(report, service)
    for line in lines:
        print(line, file=sys.stderr if status else sys.stdout)
    return status
