"""``make access-diff ref=<git ref>``: what a change of ``policies/`` grants and revokes.

The policies of ``ref`` are taken from git into a temporary directory and compiled beside the
working tree's; two throw-away PDPs serve them, one each, and both are asked the same questions
with the code of ``make access-report`` (``ops.access_report``): the demo principals about every
registered component and every record example of the policy suites, plus the components and
record examples only ``ref`` knows (described by its generated fixtures and its suites). Only the
policies differ between the two PDPs, so every difference in the answers is the policy change's.

The output says, in words, what changes: grants first, then revocations, then changes of the
confirmation a policy asks for before an allowed action runs.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from ops import devstack
from ops.access_report import (
    COMPONENT_TYPES,
    RECORD,
    Answers,
    PdpUnreachable,
    Questions,
    Subject,
    ask,
    component_subjects,
    policy_principals,
    record_subjects,
    registered_components,
    with_subjects,
)
from ops.policy_suites import ROOT, load_yaml
from server.authz import components
from server.authz.decisions import ResourceRef
from server.capability import registry
from server.settings import Settings

ChangeKind = Literal["grant", "revoke", "confirmation_dropped", "confirmation_added"]
# Output order: more access first, then less, then the confirmations asked before an action.
ORDER: Final[tuple[ChangeKind, ...]] = (
    "grant",
    "revoke",
    "confirmation_dropped",
    "confirmation_added",
)
HEADINGS: Final = {"grant": "Grants", "revoke": "Revocations"}
CONFIRMATION_HEADING: Final = "Confirmation"
WORKING_TREE: Final = "the working tree"


class DiffError(Exception):
    """The comparison cannot be made; the message is one line for the operator."""


@dataclass(frozen=True)
class Change:
    principal: str
    subject: Subject
    actions: tuple[str, ...]
    kind: ChangeKind
    after_confirmation: bool = False  # a grant that applies only after a person confirms


# --- what changed (pure) --------------------------------------------------------------------------


def changes(before: Answers, after: Answers) -> list[Change]:
    """Every difference between two sets of answers to the same questions, in output order:
    by kind (``ORDER``), then principal, then subject, as the questions list them. The actions
    of one principal on one subject that change the same way make one change."""
    questions = after.questions
    found: list[Change] = []
    for principal in questions.principals:
        for subject in questions.subjects:
            groups: dict[tuple[ChangeKind, bool], list[str]] = {}
            for action in subject.actions:
                change = change_of(
                    effect(before, principal, subject, action),
                    effect(after, principal, subject, action),
                )
                if change is not None:
                    groups.setdefault(change, []).append(action)
            found += [
                Change(principal, subject, tuple(actions), kind, confirmed)
                for (kind, confirmed), actions in groups.items()
            ]
    return sorted(found, key=lambda c: ORDER.index(c.kind))


Effect = Literal["deny", "allow", "confirm"]  # confirm: allowed after a person confirms


def effect(answers: Answers, principal: str, subject: Subject, action: str) -> Effect:
    if not answers.allows(principal, subject, action):
        return "deny"
    return "confirm" if answers.needs_confirmation(principal, subject, action) else "allow"


def change_of(was: Effect, now: Effect) -> tuple[ChangeKind, bool] | None:
    """What going from ``was`` to ``now`` is, and whether a grant needs confirmation."""
    if was == now:
        return None
    if was == "deny":
        return ("grant", now == "confirm")
    if now == "deny":
        return ("revoke", False)
    return ("confirmation_dropped" if now == "allow" else "confirmation_added", False)


def verbs(actions: Sequence[str]) -> str:
    """``list``; ``list and call``; ``view, update and close``."""
    if len(actions) == 1:
        return actions[0]
    return ", ".join(actions[:-1]) + " and " + actions[-1]


def named(subject: Subject) -> str:
    """How a sentence names a subject: a tool by its name, the rest with what they are."""
    ident = subject.ref.id
    if subject.section == "tool":
        name = ident
    elif subject.section == RECORD:
        name = f"{subject.ref.kind} record {ident}"
    else:
        name = f"{subject.section} {ident}"
    return f"{name} ({subject.note})" if subject.note else name


def sentence(change: Change) -> str:
    what = f"{verbs(change.actions)} {named(change.subject)}"
    if change.kind == "grant":
        tail = " after a person confirms it" if change.after_confirmation else ""
        return f"{change.principal}: may now {what}{tail}"
    if change.kind == "revoke":
        return f"{change.principal}: may no longer {what}"
    if change.kind == "confirmation_dropped":
        return f"{change.principal}: may now {what} without a person confirming it"
    return f"{change.principal}: may now {what} only after a person confirms it"


def render(found: Sequence[Change], *, before: str, questions: Questions) -> str:
    """The report in words (Markdown): a heading per kind of change, one line per change."""
    compared = (
        f"{questions.count} decisions compared: {len(questions.principals)} principals, "
        f"{sum(s.section != RECORD for s in questions.subjects)} components, "
        f"{sum(s.section == RECORD for s in questions.subjects)} record examples"
    )
    if not found:
        return f"no change in access between {before} and {WORKING_TREE} ({compared})\n"
    lines = [
        f"# Access changes from {before} to {WORKING_TREE}",
        "",
        f"Policies only: two throw-away PDPs, one on the policies of {before} and one on those "
        f"of {WORKING_TREE}, were asked the same questions ({compared}).",
    ]
    sections: dict[str, list[str]] = {}
    for change in found:
        heading = HEADINGS.get(change.kind, CONFIRMATION_HEADING)
        sections.setdefault(heading, []).append(f"- {sentence(change)}")
    for heading, items in sections.items():
        lines += ["", f"## {heading}", "", *items]
    return "\n".join(lines) + "\n"


# --- the two revisions ----------------------------------------------------------------------------


def git(repo: Path, *args: str) -> bytes:
    result = subprocess.run(  # noqa: S603 - git with arguments we checked
        ["git", "-C", str(repo), *args],  # noqa: S607 - git from PATH, like any developer tool
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise DiffError(detail[-1] if detail else f"git {args[0]} failed")
    return result.stdout


def resolve(repo: Path, ref: str) -> str:
    """The commit ``ref`` names in ``repo``."""
    if not ref or ref.startswith("-"):
        raise DiffError(f"not a git revision: {ref!r}")
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    except DiffError:
        raise DiffError(f"unknown git revision {ref!r} in {repo}") from None


def extract_policies(repo: Path, commit: str, policies: Path, dest: Path) -> Path:
    """Write the ``policies`` directory as it is at ``commit`` into ``dest``."""
    top = Path(git(repo, "rev-parse", "--show-toplevel").decode().strip())
    try:
        inside = policies.resolve().relative_to(top.resolve()).as_posix()
    except ValueError:
        raise DiffError(f"{policies} is not inside the git repository {top}") from None
    try:
        archive = git(top, "archive", "--format=tar", f"{commit}:{inside}")
    except DiffError:
        raise DiffError(f"revision {commit[:10]} has no {inside}/ directory") from None
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def ref_components(ref_policies: Path, note: str) -> list[Subject]:
    """The components the revision's generated fixtures describe (what its server registered),
    without the unregistered names the suites probe."""
    path = ref_policies / "tests" / "testdata" / "resources.yaml"
    data = load_yaml(path) if path.exists() else {}
    type_of = {kind: component_type for component_type, kind in components.KIND.items()}
    found: dict[str, list[ResourceRef]] = {t: [] for t in COMPONENT_TYPES}
    for fixture in (data.get("resources") or {}).values():
        component_type = type_of.get(fixture.get("kind"))
        attributes = fixture.get("attr") or {}
        if component_type and attributes.get("department") != components.UNREGISTERED:
            found[component_type].append(
                ResourceRef(fixture["kind"], str(fixture["id"]), attributes)
            )
    return component_subjects(found, note=note)


def compile_policies(cerbos: Path, policies: Path, label: str) -> None:
    result = subprocess.run(  # noqa: S603 - our binary, our directory
        [str(cerbos), "compile", "--skip-tests", "--color=never", str(policies)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        detail = " ".join((result.stderr + result.stdout).split())
        raise DiffError(f"the policies of {label} do not compile: {detail[:400]}")


def diff_questions(settings: Settings, policies: Path, ref_policies: Path, ref: str) -> Questions:
    """The report's questions for the working tree, plus what only the revision ``ref`` knows;
    a component the revision's fixtures do not describe is marked new."""
    capabilities = registry.load(settings.capabilities)
    current = registered_components(settings)
    ref_only = f"only at {ref}"
    known_at_ref = {s.key for s in ref_components(ref_policies, note="")}
    if known_at_ref:
        current = [s if s.key in known_at_ref else _noted(s, f"new since {ref}") for s in current]
    return with_subjects(
        Questions(
            principals=policy_principals(),
            subjects=(*current, *record_subjects(capabilities, policies / "tests")),
        ),
        [
            *ref_components(ref_policies, note=ref_only),
            *record_subjects(capabilities, ref_policies / "tests", note=ref_only),
        ],
    )


def _noted(subject: Subject, note: str) -> Subject:
    return Subject(subject.section, subject.ref, subject.actions, subject.capability, note)


def diff(
    cerbos: Path,
    ref: str,
    settings: Settings,
    *,
    repo: Path = ROOT,
    policies: Path | None = None,
) -> str:
    """Compare the access ``ref``'s policies give with the working tree's; the text to print."""
    policies = policies or repo / "policies"
    commit = resolve(repo, ref)
    before = f"{ref} ({commit[:10]})" if not commit.startswith(ref) else commit[:10]
    with tempfile.TemporaryDirectory(prefix="access-diff-") as tmp:
        workdir = Path(tmp)
        ref_policies = extract_policies(repo, commit, policies, workdir / "ref-policies")
        sides = ((before, ref_policies, workdir / "ref"), (WORKING_TREE, policies, workdir / "now"))
        # Compiling and starting a PDP per side takes seconds of waiting on processes: both
        # sides at once, while this thread builds the questions.
        with ThreadPoolExecutor(max_workers=2) as pool:
            starting = [pool.submit(_serve, cerbos, *side) for side in sides]
            try:
                questions = diff_questions(settings, policies, ref_policies, ref)
                was, now = (future.result() for future in starting)
                answers = asyncio.run(
                    _ask_both(was.grpc_address, now.grpc_address, questions, settings)
                )
            finally:
                for future in starting:
                    if future.exception() is None:
                        future.result().process.stop()
    return render(changes(*answers), before=before, questions=questions)


def _serve(cerbos: Path, label: str, policies: Path, workdir: Path) -> devstack.PDP:
    """A throw-away PDP on ``policies``, once they compile."""
    compile_policies(cerbos, policies, label)
    try:
        return devstack.start_pdp(cerbos, workdir=workdir, policies=policies)
    except TimeoutError as exc:
        raise DiffError(f"a PDP on the policies of {label} did not start: {exc}") from None


async def _ask_both(
    before: str, after: str, questions: Questions, settings: Settings
) -> tuple[Answers, Answers]:
    limit = settings.pdp_max_resources_per_request
    was, now = await asyncio.gather(
        ask(before, questions, max_resources_per_request=limit),
        ask(after, questions, max_resources_per_request=limit),
    )
    return was, now


def main(cerbos: Path, ref: str, settings: Settings, *, repo: Path | None = None) -> int:
    try:
        print(diff(cerbos, ref, settings, repo=repo or ROOT), end="")
    except (DiffError, PdpUnreachable) as exc:
        print(f"access-diff: {exc}", file=sys.stderr)
        return 1
    return 0
