"""The server image, rebuilt without a container engine: what ``compose/Dockerfile`` copies into
the image (its COPY and ADD lines, the build context filtered by ``.dockerignore``), installed the
way its RUN line installs it, into a fresh virtualenv.

The fresh virtualenv gets the application's runtime dependencies (and pip and setuptools, to
build it) as links to the files this checkout's virtualenv already holds: exactly the
distributions that ``mcp-server-template[postgres]`` requires, transitively, and nothing else (no
dev tools, no editable install of the checkout). So the install is offline, and an import of
something only the development extras provide fails as it would in the image.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from importlib.metadata import Distribution, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.dockerfile import copy_into_image, parse_dockerfile
from tests.support import ROOT

PROJECT = "mcp-server-template"
BUILD_TOOLS = ("pip", "setuptools")


# --- the runtime dependencies, offline ------------------------------------------------------------


def runtime_closure(
    project: str = PROJECT, extras: frozenset[str] = frozenset({"postgres"})
) -> dict[str, Distribution]:
    """Every installed distribution ``project[extras]`` needs at run time (not the project)."""
    found: dict[str, Distribution] = {}
    seen: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str]]] = [(project, extras)]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        if key in seen and wanted <= seen[key]:
            continue
        seen.setdefault(key, set()).update(wanted)
        dist = distribution(name)
        if key != canonicalize_name(project):
            found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(
                marker.evaluate({"extra": extra}) for extra in {"", *seen[key]}
            ):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return found


def link_distributions(distributions: dict[str, Distribution], site: Path) -> int:
    """Link every file of ``distributions`` that lives in site-packages into ``site``."""
    linked = 0
    for dist in distributions.values():
        files = dist.files
        assert files is not None, f"{dist.metadata['Name']} lists no files (RECORD)"
        for entry in files:
            relative = str(entry)
            if relative.startswith(".."):
                continue  # console scripts: the image runs python -m
            source = Path(str(dist.locate_file(entry)))
            if not source.is_file():
                continue
            target = site / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(source)
                linked += 1
    return linked


@dataclass
class Installed:
    venv: Path
    app: Path
    image_files: list[str]
    pip_output: str

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MCP_", "VAULT_", "BAO_", "PYTHON", "VIRTUAL_ENV"))
        }
        env["PYTHONNOUSERSITE"] = "1"
        return subprocess.run(
            [str(self.python), *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def fresh_venv(path: Path) -> Path:
    """A virtualenv without pip, its site-packages holding links to the runtime dependencies
    and the build tools; returns its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(path), "platbase": str(path)}))
    closure = runtime_closure()
    tools = {canonicalize_name(n): distribution(n) for n in BUILD_TOOLS}
    link_distributions({**closure, **tools}, purelib)
    return purelib


def install_image(dockerfile_text: str, workdir: Path) -> Installed:
    """Copy what the Dockerfile copies, then ``pip install`` it as its RUN line does (plus
    ``--no-index --no-deps --no-build-isolation``: offline, the dependencies are linked)."""
    dockerfile = parse_dockerfile(dockerfile_text)
    root = workdir / "image"
    files = copy_into_image(dockerfile, ROOT, root)
    app = root / Path(dockerfile.workdir).relative_to("/")
    venv = workdir / "venv"
    fresh_venv(venv)
    assert dockerfile.pip_install, "the Dockerfile has no `pip install` RUN line"
    installed = Installed(venv, app, files, "")
    done = installed.run(
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-index",
        "--no-deps",
        "--no-build-isolation",
        *dockerfile.pip_install,
        cwd=app,
    )
    installed.pip_output = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(f"pip install failed in the image's context:\n{installed.pip_output}")
    return installed
