"""``make -s stdio user=NAME`` (``python -m ops stdio NAME``): the MCP server on stdio as a demo
principal, for a desktop or IDE client that launches its servers, next to a running ``make dev``.

stdio has no bearer token, so the principal is configuration (``MCP_STDIO_PRINCIPAL``): here the
demo principal's attributes from ``config/dev/principals.yaml``, and every operation is still
decided by the PDP. The process uses the dev stack's PDP, OpenBao and database, and its own Vault
credential: the server's AppRole credential is single use (a response-wrapped secret id the
server unwraps and deletes), and ``make dev``'s server has spent its own. So each launch gets a
fresh one, delivered into a private temporary directory that is removed when it exits.

Who may deliver it: not the root token. ``make dev`` gives the launcher a token of its own
(``<state dir>/vault/stdio-launcher-token``, 0600, replaced at every start) whose policy allows
exactly two things: read the server role's role id and create a wrapped secret id for it. That
is what any process needs to run as the server; it cannot change policies, read secrets or mint
identities itself.

stdout is the MCP channel: everything else (logs, errors) goes to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Final

import hvac
import hvac.exceptions
import requests

from ops.dev_issuer import demo_principals
from ops.statedir import holder, state_dir
from ops.vault_admin import admin_client
from ops.vault_bootstrap import BootstrapConfig, _write_private, deliver_server_credential
from server.__main__ import serve_forever
from server.edge.principal import Principal
from server.settings import Settings

log = logging.getLogger(__name__)

LAUNCHER_POLICY: Final = "dev-stdio-launcher"
LAUNCHER_TOKEN_FILE: Final = "stdio-launcher-token"  # noqa: S105 - a file name
LAUNCHER_TOKEN_TTL: Final = "720h"  # noqa: S105 - a lifetime


def launcher_policy(config: BootstrapConfig) -> str:
    role = f"auth/{config.approle_mount}/role/{config.server_role}"
    return (
        "# Development only: deliver the MCP server's credential to a stdio launch.\n"
        f'path "{role}/role-id" {{\n  capabilities = ["read"]\n}}\n'
        f'path "{role}/secret-id" {{\n  capabilities = ["update"]\n}}\n'
    )


def issue_launcher_token(admin: hvac.Client, vault_dir: Path, config: BootstrapConfig) -> Path:
    """(Re)create the launcher's policy and token; revoke the token of the previous start."""
    admin.sys.create_or_update_policy(name=LAUNCHER_POLICY, policy=launcher_policy(config))
    path = vault_dir / LAUNCHER_TOKEN_FILE
    if path.exists():
        with contextlib.suppress(hvac.exceptions.VaultError):  # expired or already gone
            admin.auth.token.revoke(path.read_text().strip())
    created = admin.auth.token.create(
        policies=[LAUNCHER_POLICY],
        no_default_policy=True,
        renewable=False,
        ttl=LAUNCHER_TOKEN_TTL,
        display_name="stdio-launcher",
    )
    return _write_private(path, created["auth"]["client_token"])


def principal_for(name: str) -> Principal:
    principals = demo_principals()
    if name not in principals:
        raise SystemExit(f"unknown demo principal {name!r}; known: {', '.join(principals)}")
    return Principal.model_validate({"id": name, **principals[name]})


def remove_after_login(private: Path, wrapped: Path, timeout: float = 120) -> None:
    """Remove the private directory (mode 0700) once the server has logged in, not at exit: a
    client may kill the process tree without waiting for a clean exit.

    The server reads the role id, then unwraps the secret id and deletes the wrapped file; from
    then on it holds both in memory only, so the directory has nothing left it needs."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while wrapped.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(private, ignore_errors=True)

    threading.Thread(target=watch, name="stdio-credential-cleanup", daemon=True).start()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_stdio(settings: Settings, name: str) -> int:
    principal = principal_for(name)
    state = state_dir()
    if holder(state) is None:
        raise SystemExit(
            f"stdio: no `make dev` is running on {state}: start it first (this server uses its "
            "PDP, OpenBao and database), with the same port variables and DEV_STATE_DIR"
        )
    token_file = state / "vault" / LAUNCHER_TOKEN_FILE
    try:
        launcher_token = token_file.read_text().strip()
    except OSError:
        raise SystemExit(f"stdio: {token_file} is missing: restart `make dev`") from None
    config = BootstrapConfig.from_settings(settings)
    with tempfile.TemporaryDirectory(prefix="mcp-stdio-", ignore_cleanup_errors=True) as private:
        launcher = admin_client(settings, launcher_token)
        try:
            role_id, wrapped = deliver_server_credential(
                launcher, out_dir=Path(private), config=config
            )
        except hvac.exceptions.Forbidden:
            raise SystemExit(
                "stdio: OpenBao refused the launcher token (expired or revoked): restart `make dev`"
            ) from None
        except (hvac.exceptions.VaultError, requests.RequestException) as failure:
            raise SystemExit(
                f"stdio: OpenBao at {settings.vault_address} did not deliver a credential "
                f"({type(failure).__name__})"
            ) from None
        finally:
            launcher.adapter.close()
        log.info("stdio server as %s (%s), credential in a private temp dir", name, principal.roles)
        remove_after_login(Path(private), wrapped)
        # Clients close stdin, wait briefly, then send SIGTERM: exit through the normal path.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        serve_forever(
            settings.model_copy(
                update={
                    "transport": "stdio",
                    "stdio_principal": principal,
                    "vault_role_id_file": role_id,
                    "vault_wrapped_secret_id_file": wrapped,
                }
            )
        )
    return 0
