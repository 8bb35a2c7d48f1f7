"""A small kustomize renderer for the tests: enough of ``kustomize build`` for deploy/, offline.

It implements only the fields deploy/ uses (``namespace``, ``resources`` as files or directories
holding a kustomization, ``configMapGenerator`` with ``files``, ``images``) and refuses any other
field, so a kustomization that grows past it fails loudly instead of being half-rendered. It also
enforces kustomize's default load restriction: a file a kustomization reads must be in or below
that kustomization's own directory (other directories are reached only as resources with a
kustomization of their own).

Generated ConfigMaps get a content-hash suffix and the references to them in pod templates are
rewritten, as kustomize does; the suffix is not byte-identical to kustomize's.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "images"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


class KustomizeError(ValueError):
    pass


def kustomization_file(directory: Path) -> Path:
    found = [directory / name for name in KUSTOMIZATION_FILES if (directory / name).is_file()]
    if len(found) != 1:
        raise KustomizeError(f"{directory}: expected one kustomization file, found {found}")
    return found[0]


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise KustomizeError(f"security; file '{relative}' is not in or below '{root}'")
    return path


def _load(directory: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """Objects of one kustomization (bases included) and the names of its generated maps."""
    spec = yaml.safe_load(kustomization_file(directory).read_text())
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{directory}: fields this renderer does not support: {unknown}")
    objects: list[dict[str, Any]] = []
    generated: set[str] = set()
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            base_objects, base_generated = _load(target)
            objects += base_objects
            generated |= base_generated
        else:
            text = _inside(directory, entry).read_text()
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    for generator in spec.get("configMapGenerator", []):
        if set(generator) - {"name", "files"}:
            raise KustomizeError(f"unsupported configMapGenerator fields: {set(generator)}")
        data: dict[str, str] = {}
        for source in generator["files"]:
            key, _, relative = source.rpartition("=")
            path = _inside(directory, relative)
            key = key or path.name
            if key in data:
                raise KustomizeError(f"configMap {generator['name']}: duplicate key {key}")
            data[key] = path.read_text()
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
        generated.add(generator["name"])
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        _set_image(objects, image)
    return objects, generated


def render(directory: Path) -> list[dict[str, Any]]:
    """``kustomize build directory``, for the subset described above."""
    objects, generated = _load(directory)
    objects = copy.deepcopy(objects)
    renamed: dict[str, str] = {}
    for obj in objects:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] in generated:
            digest = hashlib.sha256(json.dumps(obj["data"], sort_keys=True).encode()).hexdigest()
            name = obj["metadata"]["name"]
            renamed[name] = obj["metadata"]["name"] = f"{name}-{digest[:10]}"
    for spec in pod_specs(objects):
        for ref in _config_map_refs(spec):
            if ref.get("name") in renamed:
                ref["name"] = renamed[ref["name"]]
    return objects


def _set_image(objects: list[dict[str, Any]], image: dict[str, str]) -> None:
    if set(image) - {"name", "newName", "newTag", "digest"}:
        raise KustomizeError(f"unsupported images fields: {set(image)}")
    for spec in pod_specs(objects):
        for container in containers(spec):
            name, tag = split_image(container["image"])
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            else:
                new_tag = image.get("newTag", tag)
                container["image"] = f"{name}:{new_tag}" if new_tag else name


def split_image(reference: str) -> tuple[str, str]:
    """(name, tag or @digest or '') of an image reference."""
    if "@" in reference:
        name, digest = reference.split("@", 1)
        return name, "@" + digest
    last = reference.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = reference.rsplit(":", 1)
        return name, tag
    return reference, ""


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            yield obj["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _config_map_refs(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            yield volume["configMap"]
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                yield source["configMap"]
    for container in containers(spec):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref is not None:
                yield ref
        for env_from in container.get("envFrom", []):
            if "configMapRef" in env_from:
                yield env_from["configMapRef"]
