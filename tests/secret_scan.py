"""A small secret scanner for this repository (run by tests/test_secret_scan.py in `make test`).

Common scanners miss OpenBao/Vault tokens (``s.`` + 24 characters, ``hvs.``...) and AppRole
secret ids, so this one looks for them explicitly, along with private keys, well-known token
formats, and secret-looking keys with literal values in configuration files.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TOKEN_PATTERNS = {
    "vault token": re.compile(r"\b(?:hv[sbr]\.[A-Za-z0-9_-]{24,}|[sbr]\.[A-Za-z0-9]{24})\b"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"),
    "github token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "aws access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "jwt": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
}
CONFIG_SUFFIXES = {".env", ".yaml", ".yml", ".json", ".toml", ".ini", ".cfg", ".conf", ".hcl"}
SECRET_KEY = re.compile(
    r"(token|secret|passw|api[_-]?key|private[_-]?key|credential|unseal|role[_-]?id)", re.I
)
# Keys that name where a secret lives or how it behaves, not the secret itself.
NAMING_KEY = re.compile(r"(_file|_path|_dir|_url|_address|_mount|_ttl|_type|_role|_prefix)$", re.I)
ASSIGNMENT = re.compile(
    # Key and value on one line: a key ending a line (a YAML mapping or list) has no value.
    r"""^[ \t{,]*["']?(?P<key>[A-Za-z0-9_.-]+)["']?[ \t]*(?:=|:)[ \t]*["']?"""
    r"""(?P<value><[^>]*>|\$\{[^}]*\}|[^"'#\s,]*)""",
    re.M,
)
PLACEHOLDER = re.compile(r"^(?:|\$\{.*\}|<.*>|(?:file|env)://.*|true|false|null|none|\d+)$", re.I)
SKIP_DIRS = {".git", ".venv", ".tools", ".dev", "node_modules", "__pycache__", ".mypy_cache"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}"


def repository_files(root: Path) -> list[Path]:
    """Tracked and untracked-but-not-ignored files (what a commit could contain)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout.decode()
        return [root / p for p in listed.split("\0") if p and (root / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [
            p
            for p in root.rglob("*")
            if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(root).parts)
        ]


def scan_text(name: str, text: str, *, config: bool) -> Iterator[Finding]:
    for rule, pattern in TOKEN_PATTERNS.items():
        for match in pattern.finditer(text):
            yield Finding(name, text.count("\n", 0, match.start()) + 1, rule)
    if not config:
        return
    for match in ASSIGNMENT.finditer(text):
        key, value = match["key"], match["value"]
        if not SECRET_KEY.search(key) or NAMING_KEY.search(key) or PLACEHOLDER.match(value):
            continue
        if "/" in value or value.startswith("."):  # a path or URL, not a value
            continue
        yield Finding(name, text.count("\n", 0, match.start()) + 1, f"literal value for {key}")


def is_config(path: Path) -> bool:
    return path.suffix in CONFIG_SUFFIXES or path.name.endswith(".env") or path.name == ".env"


def scan(root: Path) -> list[Finding]:
    findings: list[Finding] = []
    for path in repository_files(root):
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        name = str(path.relative_to(root))
        findings += scan_text(name, text, config=is_config(path))
    return findings
