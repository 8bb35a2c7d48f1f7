"""``python -m ops compose-secrets``: the compose stack's local secrets, generated once.

Each is a file in ``compose/.secrets/`` (git-ignored) that compose hands to the services named in
``compose/docker-compose.yaml``'s ``secrets:`` as ``/run/secrets/<name>``. Existing files are kept:
OpenBao's data is sealed with the unseal key and PostgreSQL was initialised with the passwords, so
a new value would lock the stack out of its own data.

Modes: the directory is 0700 (only you, on this machine); the files inside are 0644, because
compose (without swarm) bind-mounts them as they are and the services read them as their own
users (OpenBao as uid 10002, PostgreSQL as ``postgres``), whose uids are not yours.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Final

DIRECTORY: Final = Path("compose/.secrets")

# file name -> how its value is made
SECRETS: Final[dict[str, Callable[[], bytes]]] = {
    # OpenBao's static seal key: exactly 32 random bytes.
    "bao-unseal-key": lambda: secrets.token_bytes(32),
    # PostgreSQL's superuser (used once, to create the database and its owner) and the owner
    # (handed to Vault's database engine by the bootstrap).
    "pg-superuser-password": lambda: secrets.token_urlsafe(32).encode(),
    "pg-owner-password": lambda: secrets.token_urlsafe(32).encode(),
}


def compose_secrets(directory: Path = DIRECTORY) -> list[str]:
    """Create the missing secret files; return the names created."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    created = []
    for name, make in SECRETS.items():
        path = directory / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            path.chmod(0o644)
            continue
        with os.fdopen(fd, "wb") as out:
            out.write(make())
        path.chmod(0o644)
        created.append(name)
    return created
