"""`make audit` reads pip-audit's JSON report: it fails on any known vulnerability and never
passes a check that was not made (pip-audit itself exits 0 when its database answered for no
package). The reports here have pip-audit's shape; the unreachable case is what this machine's
index really answers."""

from __future__ import annotations

from typing import Any

import pytest

from ops.audit import ignored, verdict


def dep(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": "1.0", "vulns": [], **extra}


def unreachable(name: str) -> dict[str, Any]:
    reason = f"Dependency not found on PyPI and could not be audited: {name} (1.0)"
    return {"name": name, "skip_reason": reason}


def test_a_database_that_answered_for_no_package_fails_as_unreachable() -> None:
    status, lines = verdict({"dependencies": [unreachable("a"), unreachable("b")]}, "pypi")
    assert status == 2 and len(lines) == 1
    assert "unreachable" in lines[0] and "nothing was checked" in lines[0]


def test_a_known_vulnerability_fails_with_its_id_and_fix() -> None:
    vuln = {"id": "PYSEC-2026-1", "fix_versions": ["1.1"], "aliases": []}
    status, lines = verdict({"dependencies": [dep("a", vulns=[vuln]), dep("b")]}, "pypi")
    assert status == 1
    assert "a 1.0: PYSEC-2026-1 (fixed in 1.1)" in lines[0]


def test_packages_left_unchecked_fail_even_when_the_rest_is_clean() -> None:
    status, lines = verdict({"dependencies": [dep("a"), unreachable("b")]}, "osv")
    assert status == 2 and "1 of 2 packages could not be checked" in lines[-1]


def test_a_clean_and_complete_check_passes() -> None:
    status, lines = verdict({"dependencies": [dep("a"), dep("b")]}, "pypi")
    assert status == 0 and "2 packages checked" in lines[0]


def test_accepted_vulnerabilities_are_read_without_their_reasons(tmp_path: Any) -> None:
    listed = tmp_path / "ignore.txt"
    listed.write_text("# header\nPYSEC-2026-1  # not reachable: we never parse X\n\n")
    assert ignored(listed) == ["PYSEC-2026-1"]
    listed.write_text("PYSEC-2026-2\n")
    with pytest.raises(SystemExit, match="has no reason"):
        ignored(listed)
