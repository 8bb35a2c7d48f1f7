"""tls-init: a CA that signs one certificate for the names OpenBao is reached by, the CA's key
never written; the key 0600; kept when current, replaced when a name is missing."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509

from ops.tls_init import CA_FILE, CERT_FILE, KEY_FILE, current, tls_init

HOSTS = ["openbao", "localhost", "127.0.0.1"]


def test_the_certificate_names_every_host_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    out, ca_dir = tmp_path / "tls", tmp_path / "ca"
    assert tls_init(out, ca_dir, HOSTS) is True
    ca = x509.load_pem_x509_certificate((ca_dir / CA_FILE).read_bytes())
    cert = x509.load_pem_x509_certificate((out / CERT_FILE).read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n.value) for n in names} == set(HOSTS)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    # The CA's private key exists nowhere: only one key file, OpenBao's.
    written = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted([CA_FILE, CERT_FILE, KEY_FILE])
    assert b"PRIVATE KEY" not in (ca_dir / CA_FILE).read_bytes()
    assert stat.S_IMODE((out / KEY_FILE).stat().st_mode) == 0o600


def test_current_files_are_kept_and_a_missing_name_reissues(tmp_path: Path) -> None:
    out, ca_dir = tmp_path / "tls", tmp_path / "ca"
    tls_init(out, ca_dir, HOSTS)
    before = (out / KEY_FILE).read_bytes()
    assert tls_init(out, ca_dir, HOSTS[:2]) is False  # a subset of its names: still current
    assert (out / KEY_FILE).read_bytes() == before
    assert not current(out, ca_dir, [*HOSTS, "vault.internal"])
    assert tls_init(out, ca_dir, [*HOSTS, "vault.internal"]) is True
    assert (out / KEY_FILE).read_bytes() != before
    (ca_dir / CA_FILE).write_text("not a certificate")
    assert not current(out, ca_dir, HOSTS)
