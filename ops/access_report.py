"""``make access-report``: who may do what, asked of a running PDP.

The questions are the ones the server asks. Principals: the demo principals
(``config/dev/principals.yaml``), built from their claims exactly as the server builds a caller
from a verified token. Components: every registered tool, resource template and prompt, presented
exactly as the server presents them (``server.authz.components``), each with ``list`` and its use
action (``call``, ``read``, ``get``). Records: for each record kind a capability declares, the
representative records of the policy suites (``policies/tests/*_test.yaml``) with the actions the
suites test on them. They go through the project's own PDP client, batched per principal, so
the answers are the PDP's, not a reading of the YAML.

``ops.access_diff`` asks two PDPs the same questions with the same code.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from ops.dev_issuer import demo_principals
from ops.policy_suites import POLICY_TESTS, ROOT, fixtures, load_yaml
from server.authz import components
from server.authz.decisions import ResourceRef
from server.authz.errors import AuthorizationUnavailable
from server.authz.pdp import PolicyDecisionPoint
from server.authz.records import obligations
from server.capability import Capability, registry
from server.edge.principal import Principal, principal_from_claims
from server.settings import Settings

OUT_DIR: Final = ROOT / ".dev" / "access"
COMPONENT_TYPES: Final = ("tool", "resource", "prompt")
RECORD: Final = "record"
SECTIONS: Final = (*COMPONENT_TYPES, RECORD)
# The deadline of each batch. The server's own deadline (MCP_PDP_TIMEOUT_SECONDS) is tuned for
# a request somebody waits on; a report waits longer so that a busy machine does not fail it.
# Deadlines change when an answer arrives, never what it is.
ASK_TIMEOUT_SECONDS: Final = 5.0

SubjectKey = tuple[str, str]  # (Cerbos resource kind, resource id)
# principal -> subject -> a set of actions: those the PDP allowed (every other asked action was
# denied), or those of them the policy allows only after a person confirms (an obligation)
Allowed = dict[str, dict[SubjectKey, frozenset[str]]]


class PdpUnreachable(Exception):
    """The PDP gave no usable answer; the message is one line for the operator."""


@dataclass(frozen=True)
class Subject:
    """One thing the principals are asked about: a component or a record example."""

    section: str  # "tool", "resource", "prompt" or "record"
    ref: ResourceRef
    actions: tuple[str, ...]
    capability: str = ""  # records: the capability declaring the record kind
    note: str = ""  # e.g. where a subject known at one revision only came from

    @property
    def key(self) -> SubjectKey:
        return (self.ref.kind, self.ref.id)


@dataclass(frozen=True)
class Questions:
    principals: Mapping[str, Principal]
    subjects: tuple[Subject, ...]

    @property
    def count(self) -> int:
        """How many (principal, subject, action) decisions the questions ask for."""
        return len(self.principals) * sum(len(s.actions) for s in self.subjects)

    def in_section(self, section: str) -> list[Subject]:
        return [s for s in self.subjects if s.section == section]


@dataclass(frozen=True)
class Answers:
    questions: Questions
    allowed: Allowed
    pdp_address: str
    asked_at: datetime
    request_id: str
    confirm: Allowed = field(default_factory=dict)

    def allows(self, principal: str, subject: Subject, action: str) -> bool:
        return action in self.allowed.get(principal, {}).get(subject.key, frozenset())

    def needs_confirmation(self, principal: str, subject: Subject, action: str) -> bool:
        return action in self.confirm.get(principal, {}).get(subject.key, frozenset())


# --- the questions --------------------------------------------------------------------------------


def policy_principals() -> dict[str, Principal]:
    """The demo principals as the server builds them from a verified token's claims."""
    return {
        name: principal_from_claims({"sub": name, **claims})
        for name, claims in demo_principals().items()
    }


def component_subjects(refs: Mapping[str, Sequence[ResourceRef]], note: str = "") -> list[Subject]:
    """Components by type (as ``ops.generate.registered_refs`` lists them), with their actions."""
    return [
        Subject(
            section=component_type,
            ref=ref,
            actions=(components.LIST_ACTION, components.USE_ACTION[component_type]),
            note=note,
        )
        for component_type in COMPONENT_TYPES
        for ref in refs.get(component_type, ())
    ]


def registered_components(settings: Settings) -> list[Subject]:
    """Every component the server registers, built without starting anything."""
    return list(_registered_components(settings.capabilities))


@functools.cache
def _registered_components(capabilities: str) -> tuple[Subject, ...]:
    from ops.generate import registered_refs  # builds a server object: no I/O

    return tuple(
        component_subjects(registered_refs(Settings(transport="stdio", capabilities=capabilities)))
    )


def record_subjects(
    capabilities: Sequence[Capability], tests_dir: Path = POLICY_TESTS, note: str = ""
) -> list[Subject]:
    """The policy suites' record fixtures, for every record kind a capability declares, each with
    the actions the suites test on it (in the order the suites first ask them)."""
    owner = {record.kind: c.name for c in capabilities for record in c.records}
    kind_order = list(owner)
    found: dict[SubjectKey, tuple[ResourceRef, list[str]]] = {}
    for suite_file in sorted(tests_dir.glob("*_test.yaml")):
        suite = load_yaml(suite_file)
        resources, groups = fixtures(suite, testdata=tests_dir / "testdata")
        for test in suite.get("tests") or []:
            given = test.get("input") or {}
            keys = [k for g in given.get("resourceGroups") or [] for k in groups.get(g, [])]
            keys += list(given.get("resources") or [])
            for key in keys:
                fixture = resources.get(key)
                if not fixture or fixture.get("kind") not in owner:
                    continue
                ref = ResourceRef(
                    kind=fixture["kind"], id=str(fixture["id"]), attributes=fixture.get("attr", {})
                )
                _, actions = found.setdefault((ref.kind, ref.id), (ref, []))
                actions.extend(a for a in given.get("actions") or [] if a not in actions)
    ordered = sorted(found.values(), key=lambda item: kind_order.index(item[0].kind))
    return [
        Subject(RECORD, ref, tuple(actions), capability=owner[ref.kind], note=note)
        for ref, actions in ordered
        if actions
    ]


def questions(settings: Settings, tests_dir: Path = POLICY_TESTS) -> Questions:
    """The report's questions: demo principals x registered components and record examples."""
    capabilities = registry.load(settings.capabilities)
    return Questions(
        principals=policy_principals(),
        subjects=(
            *registered_components(settings),
            *record_subjects(capabilities, tests_dir),
        ),
    )


def with_subjects(base: Questions, extra: Iterable[Subject]) -> Questions:
    """``base`` plus the subjects it lacks (actions of a shared subject are merged), kept in
    section order."""
    subjects = {s.key: s for s in base.subjects}
    for subject in extra:
        known = subjects.get(subject.key)
        if known is None:
            subjects[subject.key] = subject
        else:
            actions = (*known.actions, *(a for a in subject.actions if a not in known.actions))
            subjects[subject.key] = replace(known, actions=actions)
    ordered = sorted(subjects.values(), key=lambda s: SECTIONS.index(s.section))
    return Questions(principals=base.principals, subjects=tuple(ordered))


# --- asking ---------------------------------------------------------------------------------------


async def ask(
    address: str,
    questions: Questions,
    *,
    max_resources_per_request: int,
    tls_ca: bytes | None = None,
    timeout_seconds: float = ASK_TIMEOUT_SECONDS,
) -> Answers:
    """Ask the PDP at ``address`` every question: one batched check per principal.

    Raises ``PdpUnreachable`` (one line) when the PDP gives no usable answer.
    """
    pdp = PolicyDecisionPoint(
        address,
        timeout_seconds=timeout_seconds,
        max_resources_per_request=max_resources_per_request,
        tls_ca=tls_ca,
    )
    request_id = f"access-report-{uuid.uuid4().hex[:12]}"
    asked_at = datetime.now(UTC).replace(microsecond=0)
    entries = [(s.ref, s.actions) for s in questions.subjects]
    await pdp.start()
    try:
        results = await asyncio.gather(
            *(
                pdp.check(principal, entries, request_id=request_id)
                for principal in questions.principals.values()
            )
        )
    except AuthorizationUnavailable as exc:
        raise PdpUnreachable(unreachable_message(address, exc)) from None
    finally:
        await pdp.close()
    allowed: Allowed = {}
    confirm: Allowed = {}
    for name, result in zip(questions.principals, results, strict=True):
        allowed[name], confirm[name] = {}, {}
        for d in result.decisions:
            key = (d.resource.kind, d.resource.id)
            allowed[name][key] = frozenset(a for a in d.actions if d.allowed(a))
            # Read exactly as the tools read it: only from an action that ended ALLOW.
            confirm[name][key] = frozenset(
                a
                for a, decision in d.actions.items()
                if obligations(decision).requires_confirmation
            )
    return Answers(
        questions=questions,
        allowed=allowed,
        pdp_address=address,
        asked_at=asked_at,
        request_id=request_id,
        confirm=confirm,
    )


def unreachable_message(address: str, exc: AuthorizationUnavailable) -> str:
    if exc.reason == "pdp_unavailable":
        why = "nothing answers there"
    elif exc.reason == "pdp_timeout":
        why = f"no answer within {ASK_TIMEOUT_SECONDS:g}s"
    else:
        why = f"{exc.reason.replace('_', ' ')}: {exc.detail}"
    return (
        f"cannot ask the PDP at {address}: {why} "
        "(start it with `make dev`, or point MCP_PDP_ADDRESS at a running one)"
    )


# --- rendering ------------------------------------------------------------------------------------


def to_json(answers: Answers) -> dict[str, Any]:
    q = answers.questions

    def decisions(subject: Subject) -> dict[str, dict[str, str]]:
        return {
            name: {a: _effect(answers, name, subject, a) for a in subject.actions}
            for name in q.principals
        }

    return {
        "pdp_address": answers.pdp_address,
        "asked_at": answers.asked_at.isoformat().replace("+00:00", "Z"),
        "request_id": answers.request_id,
        "principals": {
            name: {"roles": list(p.roles), "attributes": p.policy_attributes()}
            for name, p in q.principals.items()
        },
        "components": [
            {
                "type": s.section,
                "kind": s.ref.kind,
                "id": s.ref.id,
                "attributes": dict(s.ref.attributes),
                "decisions": decisions(s),
            }
            for s in q.subjects
            if s.section != RECORD
        ],
        "records": [
            {
                "capability": s.capability,
                "kind": s.ref.kind,
                "example": s.ref.id,
                "attributes": dict(s.ref.attributes),
                "decisions": decisions(s),
            }
            for s in q.in_section(RECORD)
        ],
    }


SECTION_TITLES: Final = {"tool": "Tools", "resource": "Resources", "prompt": "Prompts"}


def to_markdown(answers: Answers) -> str:
    q = answers.questions
    names = list(q.principals)
    asked = answers.asked_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    records = q.in_section(RECORD)
    lines = [
        "# Access report",
        "",
        f"Asked the running PDP at `{answers.pdp_address}` on {asked} "
        f"(request id `{answers.request_id}` in its decision log): {len(names)} principals by "
        f"{len(q.subjects) - len(records)} components and {len(records)} record examples, "
        f"{q.count} decisions. A cell lists the actions the PDP allowed (*confirm*: only "
        "after a person confirms it, an obligation of the policy); every other action asked "
        "was denied.",
        "",
        "## Principals",
        "",
        "| principal | roles | department | teams | mfa | refund limit |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in q.principals.items():
        teams = ", ".join(p.teams) or "—"
        mfa = "yes" if p.mfa else "no"
        lines.append(
            f"| {name} | {', '.join(p.roles)} | {p.department} | {teams} | {mfa} "
            f"| {p.refund_limit} |"
        )
    for section in COMPONENT_TYPES:
        subjects = q.in_section(section)
        if not subjects:
            continue
        actions = " + ".join(subjects[0].actions)
        lines += [
            "",
            f"## {SECTION_TITLES[section]} ({actions})",
            "",
            _row([section, *names]),
            _row(["---"] * (len(names) + 1)),
        ]
        for s in subjects:
            lines.append(_row([f"`{s.ref.id}`", *(_cell(answers, n, s) for n in names)]))
    kinds = list(dict.fromkeys((s.capability, s.ref.kind) for s in records))
    if kinds:
        lines += [
            "",
            "## Records",
            "",
            "Representative records from the policy suites (`policies/tests/`), each asked the "
            "actions the suites test on it.",
        ]
    for capability, kind in kinds:
        examples = [s for s in records if s.ref.kind == kind]
        shared, varying = _split_attributes(examples)
        lines += ["", f"### {kind} ({capability})", ""]
        if shared:
            lines += ["Every example has " + _attributes(shared, all_keys=True) + ".", ""]
        lines += [
            _row(["example", "attributes", "asked", *names]),
            _row(["---"] * (len(names) + 3)),
        ]
        for s in examples:
            attrs = _attributes({k: s.ref.attributes.get(k) for k in varying}, all_keys=True)
            lines.append(
                _row(
                    [
                        f"`{s.ref.id}`",
                        attrs or "—",
                        ", ".join(s.actions),
                        *(_cell(answers, n, s) for n in names),
                    ]
                )
            )
    return "\n".join(lines) + "\n"


def _effect(answers: Answers, principal: str, subject: Subject, action: str) -> str:
    if not answers.allows(principal, subject, action):
        return "DENY"
    if answers.needs_confirmation(principal, subject, action):
        return "ALLOW_AFTER_CONFIRMATION"
    return "ALLOW"


def _cell(answers: Answers, principal: str, subject: Subject) -> str:
    allowed = [
        f"{a} (*confirm*)" if answers.needs_confirmation(principal, subject, a) else a
        for a in subject.actions
        if answers.allows(principal, subject, a)
    ]
    return ", ".join(allowed) or "—"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _split_attributes(examples: Sequence[Subject]) -> tuple[dict[str, Any], list[str]]:
    """Attributes every example shares (stated once), and the names of those that vary."""
    keys = list(dict.fromkeys(k for s in examples for k in s.ref.attributes))
    shared: dict[str, Any] = {}
    varying = []
    for key in keys:
        values = [json.dumps(s.ref.attributes.get(key), sort_keys=True) for s in examples]
        if len(examples) > 1 and len(set(values)) == 1:
            shared[key] = examples[0].ref.attributes.get(key)
        else:
            varying.append(key)
    return shared, varying


def _attributes(attrs: Mapping[str, Any], *, all_keys: bool) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in attrs.items() if all_keys or v)


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value else "''"
    return json.dumps(value)


def write(answers: Answers, out_dir: Path = OUT_DIR) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, data = out_dir / "report.md", out_dir / "report.json"
    markdown.write_text(to_markdown(answers))
    data.write_text(json.dumps(to_json(answers), indent=2) + "\n")
    return markdown, data


def main(settings: Settings, out_dir: Path = OUT_DIR) -> int:
    """Ask the PDP at ``settings.pdp_address``; write the report; print where it is."""
    try:
        tls_ca = settings.pdp_tls_ca_file.read_bytes() if settings.pdp_tls_ca_file else None
        answers = asyncio.run(
            ask(
                settings.pdp_address,
                questions(settings),
                max_resources_per_request=settings.pdp_max_resources_per_request,
                tls_ca=tls_ca,
            )
        )
    except (PdpUnreachable, OSError) as exc:
        print(f"access-report: {exc}", file=sys.stderr)
        return 1
    for path in write(answers, out_dir):
        print(_shown(path))
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
