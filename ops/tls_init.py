"""``python -m ops tls-init``: a private CA and a server certificate for OpenBao's TLS listener,
for the compose stack (or any deployment without a CA of its own).

- the CA (ECDSA P-256, self-signed, may sign server certificates only) signs one certificate for
  the names OpenBao is reached by (``--host``, DNS names or IP addresses), then its private key
  is dropped: it is never written anywhere, so nobody can issue another certificate from it.
  Renewing means running this again after deleting the files (a new CA), and restarting the
  clients so that they read the new ``ca.crt``;
- ``ca.crt`` goes to ``--ca-dir`` (public: every client that verifies OpenBao mounts it, as
  ``MCP_VAULT_CA_FILE``); ``openbao.crt`` and ``openbao.key`` (mode 0600, owned by ``--owner``,
  the uid OpenBao runs as) to ``--out-dir``, which only OpenBao mounts;
- idempotent: files that are there, match each other, name every host and stay valid for
  another 30 days are kept.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE: Final = "ca.crt"
CERT_FILE: Final = "openbao.crt"
KEY_FILE: Final = "openbao.key"
VALID_DAYS: Final = 825
RENEW_WITHIN: Final = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int

    @classmethod
    def parse(cls, value: str) -> Owner:
        uid, _, gid = value.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise SystemExit(f"--owner {value!r}: expected UID or UID:GID (numbers)")
        return cls(int(uid), int(gid or uid))


def _names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def issue(hosts: Sequence[str], *, days: int = VALID_DAYS) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate, server key), PEM; the CA's key is not returned."""
    if not hosts:
        raise SystemExit("tls-init: at least one --host")
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcp-server-template private CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


def current(out_dir: Path, ca_dir: Path, hosts: Sequence[str]) -> bool:
    """The files there are usable as they are: the certificate names every host, was signed by
    the CA there, matches the key there and stays valid for longer than ``RENEW_WITHIN``."""
    try:
        ca = x509.load_pem_x509_certificate((ca_dir / CA_FILE).read_bytes())
        cert = x509.load_pem_x509_certificate((out_dir / CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key((out_dir / KEY_FILE).read_bytes(), None)
    except (OSError, ValueError):
        return False
    try:
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return False
    wanted = set(_names(hosts))
    same_key = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return same_key and wanted <= set(names) and cert.not_valid_after_utc - _now() > RENEW_WITHIN


def _write(path: Path, content: bytes, mode: int, owner: Owner | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
    os.chmod(tmp, mode)  # whatever the umask
    if owner is not None:
        os.chown(tmp, owner.uid, owner.gid)
    os.replace(tmp, path)


def tls_init(out_dir: Path, ca_dir: Path, hosts: Sequence[str], owner: Owner | None = None) -> bool:
    """Write the CA certificate and OpenBao's certificate and key unless usable ones are there;
    True when new ones were written. The key (and the certificate) belong to ``owner``."""
    if current(out_dir, ca_dir, hosts):
        if owner is not None:
            for name in (CERT_FILE, KEY_FILE):
                os.chown(out_dir / name, owner.uid, owner.gid)
        return False
    ca, cert, key = issue(hosts)
    _write(out_dir / KEY_FILE, key, 0o600, owner)
    _write(out_dir / CERT_FILE, cert, 0o644, owner)
    _write(ca_dir / CA_FILE, ca, 0o644, None)
    return True
