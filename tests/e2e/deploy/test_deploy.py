"""The Kubernetes manifests in deploy/, checked offline: rendered like ``kustomize build`` (see
tests/kustomize.py), every object validated against the Kubernetes API schemas of pinned versions
with unknown fields as errors, and the properties a reviewer looks for asserted one by one.

The last test runs the real Cerbos binary with the sidecar's own configuration and policy volume
(as the kubelet would lay them out from the rendered ConfigMaps) on a Unix socket, and a real
server that reaches it through the MCP_PDP_ADDRESS the manifests give it.

Nothing here needs a cluster or a container engine; nothing here proves that a cluster accepts
or runs the manifests (docs/deploy-kubernetes.md says what was and was not validated).
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from ops.devstack import PDP, spawn, wait_until
from ops.policy_suites import matrix as policy_matrix
from server.settings import Settings
from server.vault.identities import VaultFacts
from server.vault.production_guard import violations
from tests.kustomize import containers, kustomization_file, pod_specs, render, split_image
from tests.secret_scan import scan_text
from tests.support import ROOT, RunningServer, start_server

DEPLOY = ROOT / "deploy"
POLICIES = ROOT / "policies"
# The oldest Kubernetes the manifests are written for (native sidecars are GA since 1.33) and the
# newest whose schemas the pinned kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")

OBJECTS = render(DEPLOY)


# --- looking things up in the rendered objects --------------------------------------------------


def the(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in OBJECTS if o["kind"] == kind]


SERVER = the("Deployment", "mcp-server")
POD = SERVER["spec"]["template"]
COLLECTOR = the("Deployment", "otel-collector")


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in containers(spec) if c["name"] == name]
    return found


def environment(c: dict[str, Any]) -> dict[str, str]:
    assert all("value" in e for e in c.get("env", [])), "every variable has a literal value"
    return {e["name"]: e["value"] for e in c.get("env", [])}


SERVER_CONTAINER = container(POD["spec"], "mcp-server")
SIDECAR = container(POD["spec"], "cerbos")
SERVER_ENV = environment(SERVER_CONTAINER)


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in spec["volumes"] if v["name"] == name]
    return found


def mount_of(c: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount that holds ``path`` inside container ``c`` (the deepest one)."""
    holding = [m for m in c.get("volumeMounts", []) if Path(path).is_relative_to(m["mountPath"])]
    assert holding, f"{c['name']}: nothing mounted at {path}"
    return max(holding, key=lambda m: len(m["mountPath"]))


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Label-selector semantics: a Service's plain map or matchLabels + matchExpressions."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def config_of_sidecar() -> dict[str, Any]:
    """The Cerbos configuration the sidecar reads: --config resolved through its mounts."""
    (flag,) = [a for a in SIDECAR["args"] if a.startswith("--config=")]
    path = flag.removeprefix("--config=")
    mount = mount_of(SIDECAR, path)
    files = materialize(volume(POD["spec"], mount["name"]))
    return dict(yaml.safe_load(files[str(Path(path).relative_to(mount["mountPath"]))]))


def materialize(vol: dict[str, Any]) -> dict[str, str]:
    """The files a configMap or projected-configMap volume shows, as the kubelet lays them out:
    relative path -> content. A missing map or key fails, as it fails the pod."""
    maps = {o["metadata"]["name"]: o["data"] for o in of_kind("ConfigMap")}
    if "configMap" in vol:
        sources = [vol["configMap"]]
    else:
        projected = vol["projected"]["sources"]
        assert all(set(s) == {"configMap"} for s in projected), vol["name"]
        sources = [s["configMap"] for s in projected]
    files: dict[str, str] = {}
    for source in sources:
        data = maps[source["name"]]
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            assert item["path"] not in files, f"{vol['name']}: {item['path']} projected twice"
            files[item["path"]] = data[item["key"]]
    return files


def container_port(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return int(found)


def port_of(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or {"https": 443, "http": 80}[parts.scheme]


# --- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_the_pinned_kubernetes_versions(version: str) -> None:
    assert {o["kind"] for o in OBJECTS} >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }
    for obj in OBJECTS:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            used = kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where} (Kubernetes {version}): {error.message} at {list(error.path)}")
        # The schema of exactly this version, not an older one it fell back to.
        assert used == version.rsplit(".", 1)[0], where


def test_strict_validation_refuses_an_unknown_field_and_a_wrong_type() -> None:
    """The validator would catch the classic mistakes (so the test above means something)."""
    broken = yaml.safe_load(yaml.safe_dump(SERVER))
    broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(SERVER))
    broken["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = 8000
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_names_are_unique_and_everything_lands_in_one_namespace() -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in OBJECTS]
    assert len(keys) == len(set(keys))
    (namespace,) = of_kind("Namespace")
    namespaced = [o for o in OBJECTS if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {namespace["metadata"]["name"]}
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_file_a_kustomization_reads_is_in_or_below_its_own_directory(
    tmp_path: Path,
) -> None:
    """kustomize refuses anything else by default; the policies come in as a base of their own."""
    spec = yaml.safe_load(kustomization_file(DEPLOY).read_text())
    assert "../policies" in spec["resources"]
    assert kustomization_file(POLICIES).name == "Kustomization"  # not *.yaml: Cerbos skips it
    # The renderer enforces that restriction while rendering (so OBJECTS obeyed it).
    (tmp_path / "kustomization.yaml").write_text(
        "configMapGenerator:\n  - name: x\n    files: [../escape.yaml]\n"
    )
    with pytest.raises(ValueError, match="not in or below"):
        render(tmp_path)


# --- availability ---------------------------------------------------------------------------------


def test_the_server_runs_at_least_two_replicas_and_scales_on_its_own_cpu() -> None:
    assert SERVER["spec"]["replicas"] >= 2
    assert SERVER["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        SERVER["apiVersion"],
        "Deployment",
        SERVER["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "ContainerResource":
            assert metric["containerResource"]["container"] == SERVER_CONTAINER["name"]
            name = metric["containerResource"]["name"]
            assert name in SERVER_CONTAINER["resources"]["requests"]  # utilization needs requests


def test_the_disruption_budget_service_and_network_policy_select_the_server_pods() -> None:
    labels = POD["metadata"]["labels"]
    collector_labels = COLLECTOR["spec"]["template"]["metadata"]["labels"]
    assert selects(SERVER["spec"]["selector"], labels)
    (pdb,) = of_kind("PodDisruptionBudget")
    service = the("Service", "mcp-server")
    policy = the("NetworkPolicy", "mcp-server")
    for selector in (
        pdb["spec"]["selector"],
        service["spec"]["selector"],
        policy["spec"]["podSelector"],
    ):
        assert selects(selector, labels)
        assert not selects(selector, collector_labels)
    # One pod may go at a time, and there are always more than one.
    assert pdb["spec"].get("maxUnavailable", 1) == 1 or pdb["spec"].get("minAvailable", 0) >= 1
    (port,) = service["spec"]["ports"]
    assert container_port(SERVER_CONTAINER, port["targetPort"]) == int(SERVER_ENV["PORT"])


def test_probes_use_livez_and_readyz_on_the_mcp_port() -> None:
    http = SERVER_CONTAINER["ports"][0]["name"]
    liveness, readiness = SERVER_CONTAINER["livenessProbe"], SERVER_CONTAINER["readinessProbe"]
    assert (liveness["httpGet"]["path"], liveness["httpGet"]["port"]) == ("/livez", http)
    assert (readiness["httpGet"]["path"], readiness["httpGet"]["port"]) == ("/readyz", http)
    assert SERVER_CONTAINER["startupProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = SIDECAR[probe]["exec"]["command"]
        assert command[:2] == ["/cerbos", "healthcheck"], probe


# --- the PDP sidecar ---------------------------------------------------------------------------


def test_the_pdp_sidecar_and_the_server_share_the_socket_the_server_dials() -> None:
    config = config_of_sidecar()
    listen = config["server"]["grpcListenAddr"]
    assert listen.startswith("unix:/")
    assert SERVER_ENV["MCP_PDP_ADDRESS"] == listen
    socket_path = listen.removeprefix("unix:")
    server_mount, sidecar_mount = (
        mount_of(SERVER_CONTAINER, socket_path),
        mount_of(SIDECAR, socket_path),
    )
    assert server_mount["name"] == sidecar_mount["name"]
    assert server_mount["mountPath"] == sidecar_mount["mountPath"]
    assert "emptyDir" in volume(POD["spec"], server_mount["name"])
    # Nothing of the PDP is on the network: its HTTP API is a socket too, and no port is declared.
    assert config["server"]["httpListenAddr"].startswith("unix:/")
    assert "ports" not in SIDECAR
    # The socket is created by the PDP's user and the server connects as the same user.
    assert "runAsUser" not in SIDECAR["securityContext"]
    assert "runAsUser" not in SERVER_CONTAINER["securityContext"]
    assert POD["spec"]["securityContext"]["runAsUser"] == 10001
    # A native sidecar: started (and healthy) before the server, stopped after it.
    assert SIDECAR in POD["spec"]["initContainers"] and SIDECAR["restartPolicy"] == "Always"
    assert "startupProbe" in SIDECAR


def test_the_sidecar_pdp_is_configured_like_the_development_pdp() -> None:
    k8s = config_of_sidecar()
    dev = yaml.safe_load((ROOT / "config" / "cerbos" / "config.yaml").read_text())
    assert k8s["server"]["requestLimits"] == dev["server"]["requestLimits"]
    assert k8s["schema"] == dev["schema"] and k8s["engine"] == dev["engine"]
    assert k8s["audit"]["includeMetadataKeys"] == dev["audit"]["includeMetadataKeys"]
    assert k8s["telemetry"] == {"disabled": True}
    limit = k8s["server"]["requestLimits"]["maxResourcesPerRequest"]
    assert int(SERVER_ENV["MCP_PDP_MAX_RESOURCES_PER_REQUEST"]) == limit
    # The policy directory is the policy volume.
    directory = k8s["storage"]["disk"]["directory"]
    assert mount_of(SIDECAR, directory)["mountPath"] == directory


def policy_tree() -> dict[str, str]:
    """What the PDP must load: every policy file of policies/ except the test suites."""
    return {
        str(p.relative_to(POLICIES)): p.read_text()
        for p in POLICIES.rglob("*")
        if p.is_file()
        and p.suffix in (".yaml", ".yml", ".json")
        and p.relative_to(POLICIES).parts[0] != "tests"
    }


def test_the_policy_volume_holds_exactly_the_policy_tree_without_its_tests() -> None:
    directory = config_of_sidecar()["storage"]["disk"]["directory"]
    files = materialize(volume(POD["spec"], mount_of(SIDECAR, directory)["name"]))
    expected = policy_tree()
    assert {p.split("/")[0] for p in expected} >= {"derived_roles", "_schemas", "mcp_tool.yaml"}
    assert sorted(files) == sorted(expected)
    assert files == expected
    assert not [p for p in files if p.startswith("tests/") or p.endswith("_test.yaml")]


# --- the server's configuration -------------------------------------------------------------------


def every_environment() -> Iterator[tuple[str, dict[str, str]]]:
    for spec in pod_specs(OBJECTS):
        for c in containers(spec):
            yield c["name"], environment(c)


def test_every_server_variable_is_a_real_setting() -> None:
    known = {f"MCP_{name.upper()}" for name in Settings.model_fields} | {"PORT"}
    for name, env in every_environment():
        unknown = {k for k in env if k.startswith("MCP_") or k == "PORT"} - known
        assert not unknown, f"{name}: {unknown}"


def test_the_server_environment_is_a_valid_production_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in SERVER_ENV.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.environment == "production"
    assert settings.vault_login == "jwt" and settings.vault_tls_verify
    assert urlsplit(settings.vault_address).scheme == "https"
    assert urlsplit(settings.auth_jwks_url or "").scheme == "https"
    # The rules the guard can check without Vault pass; the rest it checks on the live token.
    facts = VaultFacts(settings.vault_address, "raft", ("mcp-server",), server_token_expires=True)
    assert violations(settings, facts) == []


def test_the_vault_login_uses_a_projected_token_for_vault_and_nothing_else() -> None:
    jwt_file = Path(SERVER_ENV["MCP_VAULT_JWT_FILE"])
    mount = mount_of(SERVER_CONTAINER, str(jwt_file))
    assert mount.get("readOnly") is True
    (source,) = volume(POD["spec"], mount["name"])["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["path"] == str(jwt_file.relative_to(mount["mountPath"]))
    assert token["audience"] == "vault"
    assert token["expirationSeconds"] <= 3600
    # No Kubernetes API token in the pod, and the service account exists.
    account = the("ServiceAccount", POD["spec"]["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert POD["spec"]["automountServiceAccountToken"] is False
    assert SERVER_ENV["MCP_VAULT_JWT_ROLE"] and SERVER_ENV["MCP_VAULT_JWT_MOUNT"]


def test_the_network_policy_admits_the_mcp_port_and_reaches_only_what_the_server_uses() -> None:
    policy = the("NetworkPolicy", "mcp-server")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = policy["ingress"]
    assert [container_port(SERVER_CONTAINER, p["port"]) for p in ingress["ports"]] == [
        int(SERVER_ENV["PORT"])
    ]
    egress = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    database = make_url(SERVER_ENV["MCP_DATABASE_URL"]).port
    configured = {
        ("TCP", port_of(SERVER_ENV["MCP_VAULT_ADDRESS"])),
        ("TCP", port_of(SERVER_ENV["MCP_OTEL_ENDPOINT"])),
        ("TCP", database),
        ("TCP", port_of(SERVER_ENV["MCP_AUTH_JWKS_URL"])),
        ("UDP", 53),
        ("TCP", 53),
    }
    assert egress == configured
    # Every egress rule is narrowed to a destination, and the one towards public addresses
    # (the identity provider) excludes the private ranges, where the cluster lives.
    for rule in policy["egress"]:
        assert rule.get("to"), rule
        for peer in rule["to"]:
            if "ipBlock" in peer:
                excluded = [ipaddress.ip_network(c) for c in peer["ipBlock"]["except"]]
                assert ipaddress.ip_network("10.0.0.0/8") in excluded
    # The collector rule reaches the collector pods (in this namespace) on their OTLP port.
    collector = COLLECTOR["spec"]["template"]

    def to_collector(peer: dict[str, Any]) -> bool:
        return (
            "namespaceSelector" not in peer
            and "podSelector" in peer
            and (selects(peer["podSelector"], collector["metadata"]["labels"]))
        )

    (rule,) = [r for r in policy["egress"] if any(to_collector(p) for p in r["to"])]
    otlp = container_port(container(collector["spec"], "otel-collector"), "otlp-grpc")
    assert (
        [p["port"] for p in rule["ports"]] == [otlp] == [port_of(SERVER_ENV["MCP_OTEL_ENDPOINT"])]
    )


# --- hardening ----------------------------------------------------------------------------------


def test_every_container_runs_non_root_read_only_without_privileges_and_with_limits() -> None:
    specs = list(pod_specs(OBJECTS))
    assert len(specs) == 2
    for spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v]
        for c in containers(spec):
            security = c["securityContext"]
            where = c["name"]
            assert security["runAsNonRoot"] is True, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert not security.get("privileged"), where
            for kind in ("requests", "limits"):
                assert set(c["resources"][kind]) >= {"cpu", "memory"}, (where, kind)


def test_every_image_is_pinned_to_an_exact_version() -> None:
    images = {c["name"]: c["image"] for spec in pod_specs(OBJECTS) for c in containers(spec)}
    for name, image in images.items():
        reference, tag = split_image(image)
        assert re.fullmatch(r"[a-z0-9._/-]+", reference), name
        assert re.fullmatch(r"\d+(\.\d+)+|@sha256:[0-9a-f]{64}", tag), f"{name}: {image}"
    makefile = (ROOT / "Makefile").read_text()
    (cerbos_version,) = re.findall(r"^CERBOS_VERSION := (\S+)$", makefile, re.M)
    assert images["cerbos"] == f"cerbos/cerbos:{cerbos_version}"
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yaml").read_text())
    assert images["otel-collector"] == compose["services"]["otel-collector"]["image"]
    # The server image is kustomize's to set; the placeholder is replaced when rendering.
    assert split_image(images["mcp-server"])[0] == "mcp-server-template"


def test_the_manifests_hold_no_secret_values() -> None:
    kinds = {o["kind"] for o in OBJECTS}
    assert "Secret" not in kinds
    text = yaml.safe_dump_all(OBJECTS)
    assert "secretKeyRef" not in text and "secretRef" not in text
    assert "database_password" not in text
    for name, env in every_environment():
        for key, value in env.items():
            if re.search(r"token|secret|passw|key", key, re.IGNORECASE):
                assert value.startswith("/"), f"{name}: {key} is not a file path"
    database = make_url(SERVER_ENV["MCP_DATABASE_URL"])
    assert database.username is None and database.password is None  # logins come from Vault
    sources = [p for p in DEPLOY.rglob("*") if p.is_file()] + [kustomization_file(POLICIES)]
    findings = [f for p in sources for f in scan_text(str(p), p.read_text(), config=True)]
    findings += list(scan_text("rendered manifests", text, config=True))
    assert [str(f) for f in findings] == []


# --- the sidecar's configuration, run: real Cerbos on a Unix socket, a real server dialling it --


def in_a_pod(root: Path) -> Callable[[str], str]:
    """Maps the sidecar's in-pod paths (under its mount points) to the same paths under ``root``."""
    mounts = sorted((m["mountPath"] for m in SIDECAR["volumeMounts"]), key=len, reverse=True)
    pattern = re.compile(rf"(?<![\w/])({'|'.join(map(re.escape, mounts))})(?![\w.-])")

    def remap(text: str) -> str:
        return pattern.sub(lambda match: f"{root}{match[1]}", text)

    return remap


@pytest.fixture
def sidecar_pdp(cerbos_bin: Path) -> Iterator[tuple[PDP, Callable[[str], str]]]:
    """The sidecar as the pod runs it: its args, config and policy volume, under a temporary root
    (short, because a Unix socket path has a length limit)."""
    with tempfile.TemporaryDirectory(prefix="pod-") as pod_root:
        root = Path(pod_root)
        remap = in_a_pod(root)
        args = [remap(a) for a in SIDECAR["args"]]
        (config_file,) = [a.removeprefix("--config=") for a in args if a.startswith("--config=")]
        for mount in SIDECAR["volumeMounts"]:
            target = Path(remap(mount["mountPath"]))
            target.mkdir(parents=True)
            vol = volume(POD["spec"], mount["name"])
            if "emptyDir" in vol:
                continue
            for relative, content in materialize(vol).items():
                path = target / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                # The PDP's own configuration names in-pod paths; policies are copied verbatim.
                path.write_text(remap(content) if str(path) == config_file else content)
        env = environment(SIDECAR)
        env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")  # no collector here
        log = root / "cerbos.log"
        process = spawn("cerbos-sidecar", [str(cerbos_bin), *args], log_path=log, env=env)
        probe = [remap(a) for a in SIDECAR["startupProbe"]["exec"]["command"]]
        probe[0] = str(cerbos_bin)

        def started() -> bool:
            return process.alive() and subprocess.run(probe, capture_output=True).returncode == 0

        try:
            wait_until(started, timeout=20, what="Cerbos sidecar (its startup probe)")
            address = remap(SERVER_ENV["MCP_PDP_ADDRESS"])
            assert len(address) < 100, "Unix socket paths are limited to about 107 bytes"
            yield PDP(process, address, http_url="", audit_log=log), remap
        finally:
            process.stop()


TOOLS = policy_matrix("mcp_tool_test.yaml")


async def test_the_server_reaches_the_sidecar_pdp_over_its_unix_socket(
    sidecar_pdp: tuple[PDP, Callable[[str], str]],
    make_settings: Callable[..., Settings],
    token: Callable[..., str],
) -> None:
    pdp, _ = sidecar_pdp
    assert pdp.grpc_address.startswith("unix:/")
    running: RunningServer = start_server(make_settings(pdp), token)
    try:
        for who in ("alice", "mallory"):
            async with running.client(who) as client:
                listed = {t.name for t in await client.list_tools()}
            assert listed == {t for t in TOOLS.components if TOOLS.allows(who, t, "list")}, who
        async with running.client("alice") as client:
            result = await client.call_tool("list_tickets", {"limit": 3})
        assert not result.is_error
    finally:
        running.stop()
    # Its decision log goes to stdout (the pod's log), tagged with the server's request ids.

    def logged() -> bool:
        return '"x-request-id"' in (pdp.audit_log.read_text() if pdp.audit_log.exists() else "")

    wait_until(logged, timeout=5, what="the sidecar's decision log on stdout")
    assert '"log.kind":"decision"' in pdp.audit_log.read_text()
