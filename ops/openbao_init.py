"""``python -m ops openbao-init``: initialise a fresh, non-dev OpenBao once, over TLS.

For the compose stack's OpenBao (raft storage, auto-unsealed by a static key from a compose
secret), or any OpenBao with an auto-unseal seal:

- waits until OpenBao answers (verifying its certificate with ``--ca-file``);
- not initialised yet: initialises it with ``--recovery-shares`` recovery keys (an auto-unseal
  seal has no unseal keys) and writes what comes back, each mode 0600, to ``--out-dir``:
  ``root-token`` (what the bootstrap job uses as its admin token) and ``recovery-keys.json``
  (the recovery keys: needed to generate a new root token, ``bao operator generate-root``, once
  this one is revoked, and for a few seal operations). Nothing is printed;
- already initialised: checks that ``root-token`` is there (an operator may have replaced it
  with another admin token) and changes nothing;
- either way waits until OpenBao is unsealed and active.

Whoever can read ``--out-dir`` holds the keys to everything in OpenBao: mount it only where it is
needed (compose: this job and the bootstrap job) and keep a copy of the recovery keys offline.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

ROOT_TOKEN_FILE: Final = "root-token"  # noqa: S105 - a file name
RECOVERY_KEYS_FILE: Final = "recovery-keys.json"


class OpenBaoInitError(SystemExit):
    """OpenBao cannot be initialised as asked; the message says why and what to do."""


def _context(ca_file: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def _request(
    address: str, path: str, context: ssl.SSLContext, *, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - the operator's OpenBao address
        f"{address.rstrip('/')}/v1/{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method="PUT" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:  # noqa: S310
            return int(answer.status), json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return int(error.code), {}


def _wait(check: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            result = check()
        except (urllib.error.URLError, OSError) as error:
            last = f": {getattr(error, 'reason', error)}"
            result = None
        if result is not None:
            return result
        time.sleep(0.5)
    raise OpenBaoInitError(f"openbao-init: {what} not reached within {timeout:.0f}s{last}")


def _write_private(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(content)


def openbao_init(
    address: str,
    out_dir: Path,
    *,
    ca_file: Path | None,
    recovery_shares: int = 1,
    recovery_threshold: int = 1,
    timeout: float = 120,
) -> bool:
    """Initialise OpenBao at ``address`` unless it is; True when it was initialised now."""
    context = _context(ca_file)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token_file, keys_file = out_dir / ROOT_TOKEN_FILE, out_dir / RECOVERY_KEYS_FILE

    def init_status() -> bool | None:
        status, answer = _request(address, "sys/init", context)
        return bool(answer["initialized"]) if status == 200 and "initialized" in answer else None

    initialised = _wait(init_status, timeout=timeout, what=f"OpenBao at {address}")
    if not initialised:
        if token_file.exists() or keys_file.exists():
            raise OpenBaoInitError(
                f"openbao-init: OpenBao at {address} is not initialised but {out_dir} holds the "
                "keys of an earlier one: move them away (they open nothing now) and run again"
            )
        status, answer = _request(
            address,
            "sys/init",
            context,
            body={"recovery_shares": recovery_shares, "recovery_threshold": recovery_threshold},
        )
        if status != 200 or "root_token" not in answer:
            raise OpenBaoInitError(f"openbao-init: initialising OpenBao failed (HTTP {status})")
        _write_private(token_file, answer["root_token"] + "\n")
        _write_private(
            keys_file,
            json.dumps(
                {
                    "recovery_keys_base64": answer.get("recovery_keys_base64", []),
                    "recovery_threshold": recovery_threshold,
                },
                indent=2,
            )
            + "\n",
        )
    elif not token_file.exists():
        raise OpenBaoInitError(
            f"openbao-init: OpenBao at {address} is initialised, but {token_file} is missing: "
            "put an admin token there for the bootstrap (bao operator generate-root with the "
            "recovery keys makes one)"
        )

    def active() -> bool | None:
        status, _ = _request(address, "sys/health", context)
        return True if status == 200 else None

    _wait(active, timeout=timeout, what="OpenBao unsealed and active")
    return not initialised
