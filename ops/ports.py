"""The ports ``make dev`` listens on, the variable that moves each one, and the check that refuses
a busy port before anything is touched.

Every port comes from a variable (``config/dev/dev.env`` turns them into the settings):

============== ======= ===============================================
variable       default service
============== ======= ===============================================
PORT           8000    the MCP server (HTTP); with REPLICAS=N also PORT+1 .. PORT+N-1
PDP_GRPC_PORT  3593    the Cerbos PDP, gRPC (the server's PDP client)
PDP_HTTP_PORT  3592    the Cerbos PDP, HTTP (health, access reports)
OPENBAO_PORT   8200    OpenBao's API; OpenBao also binds this port + 1 (cluster)
ISSUER_PORT    8900    the dev token issuer (JWKS, discovery)
============== ======= ===============================================

A busy port means another program (often a ``make dev`` already running) listens there: the
check names the port, the service and the variable, and nothing else happens.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from server.settings import Settings

DEFAULT_PDP_HTTP_PORT: Final = 3592


@dataclass(frozen=True)
class DevPort:
    service: str
    port: int
    variable: str  # the variable that moves it

    def describe(self) -> str:
        return f"{self.port} ({self.service}; move it with {self.variable}=<port>)"


class PortsBusy(SystemExit):
    """Raised before anything is touched; its message is the whole, one-line explanation."""


def pdp_http_port_from_environment() -> int:
    value = os.environ.get("PDP_HTTP_PORT", "").strip()
    if not value:
        return DEFAULT_PDP_HTTP_PORT
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SystemExit(f"PDP_HTTP_PORT={value!r} is not a port number")
    return int(value)


def _moved_by(variable: str, setting: str) -> str:
    """The variable to name: the port variable, unless the setting itself was given directly
    (then the port variable would not move it)."""
    return setting if setting in os.environ else variable


def _url_port(url: str | None, what: str) -> int:
    parsed = urlsplit(url or "")
    if parsed.port is None:
        raise SystemExit(f"{what} ({url!r}) names no port")
    return parsed.port


def _address_port(address: str, what: str) -> int:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"{what} ({address!r}) is not host:port")
    return int(port)


def dev_ports(settings: Settings, pdp_http_port: int, replicas: int = 1) -> list[DevPort]:
    """Every port the development stack binds, with the variable that moves it; with
    ``replicas`` > 1 the further server processes on the ports after the server's."""
    vault = _url_port(settings.vault_address, "MCP_VAULT_ADDRESS")
    server = _moved_by("PORT", "MCP_PORT")
    return [
        DevPort("MCP server", settings.port, server),
        *(
            DevPort(f"MCP server replica {n}, PORT + {n - 1}", settings.port + n - 1, server)
            for n in range(2, replicas + 1)
        ),
        DevPort(
            "Cerbos PDP gRPC",
            _address_port(settings.pdp_address, "MCP_PDP_ADDRESS"),
            _moved_by("PDP_GRPC_PORT", "MCP_PDP_ADDRESS"),
        ),
        DevPort("Cerbos PDP HTTP", pdp_http_port, "PDP_HTTP_PORT"),
        DevPort("OpenBao", vault, _moved_by("OPENBAO_PORT", "MCP_VAULT_ADDRESS")),
        DevPort(
            "OpenBao cluster, OpenBao's port + 1",
            vault + 1,
            _moved_by("OPENBAO_PORT", "MCP_VAULT_ADDRESS"),
        ),
        DevPort(
            "dev token issuer",
            _url_port(settings.auth_issuer, "MCP_AUTH_ISSUER"),
            _moved_by("ISSUER_PORT", "MCP_AUTH_ISSUER"),
        ),
    ]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (a socket in TIME_WAIT does not count: the
    servers bind with SO_REUSEADDR too). A listener bound with SO_REUSEPORT, as the Cerbos PDP
    binds, still makes this bind fail, so a second PDP cannot silently share the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def refuse_busy_ports(ports: list[DevPort], *, command: str = "make dev") -> None:
    """Raise ``PortsBusy`` (a one-line message, exit status 1) if two services share a port or
    any port is in use; return quietly when every port is free."""
    counts = Counter(p.port for p in ports)
    clashes = sorted({p.port for p in ports if counts[p.port] > 1})
    if clashes:
        named = "; ".join(
            f"{port}: "
            + " and ".join(f"{p.service} ({p.variable})" for p in ports if p.port == port)
            for port in clashes
        )
        raise PortsBusy(f"{command}: two services would share a port ({named}): move one of them")
    busy = [p for p in ports if not port_is_free(p.port)]
    if busy:
        what = "; ".join(p.describe() for p in busy)
        raise PortsBusy(
            f"{command}: port{'s' if len(busy) > 1 else ''} in use: {what}. Nothing was started "
            "or changed (is another `make dev` running?)"
        )
