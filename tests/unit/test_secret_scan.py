"""No credential in the repository or in config/, and the scanner really finds credentials.

The positive samples are assembled at run time, so this file itself holds none.
"""

from __future__ import annotations

import secrets
import string
import uuid

import pytest

from tests.secret_scan import scan, scan_text
from tests.support import ROOT

ALNUM = string.ascii_letters + string.digits


def random_text(length: int) -> str:
    return "".join(secrets.choice(ALNUM) for _ in range(length))


def test_the_repository_and_config_hold_no_credentials() -> None:
    findings = scan(ROOT)
    assert [str(f) for f in findings] == []


def test_config_is_scanned_as_configuration() -> None:
    scanned = {p.name for p in (ROOT / "config").rglob("*") if p.is_file()}
    assert {"dev.env", "mcp-server.hcl", "config.yaml"} <= scanned


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("token = " + "s." + random_text(24), "vault token"),
        ("VAULT_TOKEN=" + "hv" + "s." + random_text(90), "vault token"),
        ("-----BEGIN " + "RSA PRIVATE KEY-----\nMIIE", "private key"),
        ("gh" + "p_" + random_text(36), "github token"),
        ("AK" + "IA" + random_text(16).upper(), "aws access key"),
        ("auth: eyJ" + random_text(20) + ".eyJ" + random_text(30) + "." + random_text(40), "jwt"),
    ],
)
def test_the_scanner_finds_token_formats_anywhere(text: str, rule: str) -> None:
    assert rule in {f.rule for f in scan_text("sample.py", text, config=False)}


@pytest.mark.parametrize(
    "text",
    [
        "MCP_DATABASE_PASSWORD=" + random_text(20),
        "secret_id: " + str(uuid.uuid4()),
        '{"api_key": "' + random_text(32) + '"}',
        "role_id = " + str(uuid.uuid4()),
        "unseal_key: " + random_text(43) + "=",
    ],
)
def test_the_scanner_finds_literal_secret_values_in_configuration(text: str) -> None:
    assert [f.rule for f in scan_text("sample.env", text, config=True)] != []


@pytest.mark.parametrize(
    "text",
    [
        "MCP_VAULT_WRAPPED_SECRET_ID_FILE=.dev/vault/credential/secret-id.wrapped",
        "password: ${DB_PASSWORD}",
        "api_key: <your key>",
        "token_ttl: 3600",
        "MCP_VAULT_ROLE_ID_FILE=/run/secrets/role-id",
    ],
)
def test_the_scanner_accepts_names_paths_and_placeholders(text: str) -> None:
    assert list(scan_text("sample.env", text, config=True)) == []
