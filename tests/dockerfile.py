"""``compose/Dockerfile`` read as data, and its build context as Docker sees it: instructions,
COPY/ADD sources, the ``pip install`` of its RUN line, ``.dockerignore`` (Docker's matching rules),
and the files the COPY lines put into the image. No container engine needed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import ROOT

DOCKERFILE = ROOT / "compose" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


# --- the Dockerfile --------------------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    destination: str
    workdir: str


@dataclass
class Dockerfile:
    base: str = ""
    workdir: str = "/"
    copies: list[Copy] = field(default_factory=list)
    pip_install: list[str] = field(default_factory=list)  # the arguments after `pip install`
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    if current:
        joined.append(current)
    out = []
    for entry in joined:
        word, _, rest = entry.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _arguments(rest: str) -> list[str]:
    if rest.startswith("["):
        value = json.loads(rest)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return shlex.split(rest)


def parse_dockerfile(text: str) -> Dockerfile:
    parsed = Dockerfile(instructions=instructions(text))
    for word, rest in parsed.instructions:
        if word == "FROM":
            parsed.base = rest.split()[0]
        elif word == "WORKDIR":
            parsed.workdir = str(Path(parsed.workdir, rest))
        elif word in ("COPY", "ADD"):
            args = _arguments(rest)
            flags = [a for a in args if a.startswith("--")]
            paths = [a for a in args if not a.startswith("--")]
            if any(f.startswith("--from") for f in flags):
                continue  # from another stage or image, not from the build context
            parsed.copies.append(Copy(tuple(paths[:-1]), paths[-1], parsed.workdir))
        elif word == "RUN" and "pip install" in rest:
            after = rest.split("pip install", 1)[1].split("&&", 1)[0]
            parsed.pip_install = shlex.split(after)
        elif word == "CMD":
            parsed.cmd = _arguments(rest)
        elif word == "USER":
            parsed.user = rest
    return parsed


# --- .dockerignore -------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's matching (Go's filepath.Match, plus ``**`` for any number of directories)."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out = out[:-2] + "(?:.*/)?"
                i += 1
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i)
            out += pattern[i : end + 1] if end > i else re.escape(c)
            i = end if end > i else i
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


@dataclass
class DockerIgnore:
    rules: list[tuple[re.Pattern[str], bool]]  # (pattern, is an exception "!")

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        rules = []
        if path.exists():
            for line in path.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                negate = line.startswith("!")
                pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
                rules.append((_pattern_regex(pattern), negate))
        return cls(rules)

    def excludes(self, relative: str) -> bool:
        """True when ``relative`` (a path in the context, / separated) is left out: the last
        rule that matches it or one of its parent directories decides."""
        parts = relative.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for regex, negate in self.rules:
            if any(regex.match(c) for c in candidates):
                excluded = not negate
        return excluded


# --- the image's files ------------------------------------------------------------------------


def context_files(context: Path, ignore: DockerIgnore) -> list[str]:
    """Every file of the build context after .dockerignore, relative and / separated."""
    files = []
    for directory, subdirs, names in os.walk(context):
        relative_dir = Path(directory).relative_to(context)
        subdirs[:] = [
            d
            for d in subdirs
            if not ignore.excludes((relative_dir / d).as_posix())
            or any(negate for _, negate in ignore.rules)
        ]
        for name in names:
            relative = (relative_dir / name).as_posix()
            if not ignore.excludes(relative):
                files.append(relative)
    return sorted(files)


class MissingFromContext(AssertionError):
    pass


def copy_into_image(dockerfile: Dockerfile, context: Path, root: Path) -> list[str]:
    """Apply the COPY/ADD lines: ``root`` stands for the image's filesystem. Returns every file
    copied, as its path in the image."""
    ignore = DockerIgnore.read(context / ".dockerignore")
    available = context_files(context, ignore)
    copied = []
    for copy in dockerfile.copies:
        destination = Path(copy.workdir, copy.destination)
        for source in copy.sources:
            clean = os.path.normpath(source).lstrip("/")
            if clean == ".":
                matched = available
                strip = ""
            else:
                matched = [f for f in available if f == clean or f.startswith(clean + "/")]
                strip = clean
            if not matched:
                raise MissingFromContext(
                    f"COPY {source}: not in the build context (missing, or left out by "
                    ".dockerignore)"
                )
            into_directory = copy.destination.endswith("/") or len(copy.sources) > 1
            for relative in matched:
                if relative == strip:  # a single file
                    target = destination / Path(relative).name if into_directory else destination
                else:
                    target = destination / relative[len(strip) :].lstrip("/")
                in_root = root / target.relative_to("/")
                in_root.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(context / relative, in_root)
                copied.append(target.as_posix())
    return copied
