"""`make access-diff` in words: what changed is said grants first, then revocations, then
confirmations, one line per principal and subject, with the actions that changed the same way
together. (tests/e2e/ops/test_access_diff.py runs it against real PDPs.)"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ops.access_diff import (
    Change,
    Effect,
    change_of,
    changes,
    diff_questions,
    render,
    sentence,
    verbs,
)
from ops.access_report import (
    Allowed,
    Answers,
    Questions,
    Subject,
    SubjectKey,
    record_subjects,
    registered_components,
)
from ops.policy_suites import ROOT, dump_yaml
from server.authz.decisions import ResourceRef
from server.edge.principal import Principal
from server.settings import Settings
from tools import CAPABILITIES

TOOL = Subject("tool", ResourceRef("mcp_tool", "suspend_account"), ("list", "call"))
RESOURCE = Subject("resource", ResourceRef("mcp_resource", "ticket://{id}"), ("list", "read"))
RECORD = Subject(
    "record", ResourceRef("ticket", "ticket_tier2_open"), ("view", "close"), capability="t"
)
OLD_TOOL = Subject(
    "tool", ResourceRef("mcp_tool", "retired"), ("list", "call"), note="only at v1 (abc)"
)
SUBJECTS = (TOOL, RESOURCE, RECORD, OLD_TOOL)
POLICIES = ROOT / "policies"


def principal(name: str) -> Principal:
    return Principal(id=name, roles=("r",), department="d")


QUESTIONS = Questions(
    principals={n: principal(n) for n in ("alice", "carol", "mallory")}, subjects=SUBJECTS
)


def answers(
    allowed: dict[str, dict[SubjectKey, set[str]]], confirm: Allowed | None = None
) -> Answers:
    return Answers(
        questions=QUESTIONS,
        allowed={
            p: {key: frozenset(a) for key, a in by_subject.items()}
            for p, by_subject in allowed.items()
        },
        pdp_address="127.0.0.1:1",
        asked_at=datetime(2030, 1, 1, tzinfo=UTC),
        request_id="r",
        confirm=confirm or {},
    )


@pytest.mark.parametrize(
    ("actions", "words"),
    [(["list"], "list"), (["list", "call"], "list and call"), (["a", "b", "c"], "a, b and c")],
)
def test_actions_read_as_a_list_in_words(actions: list[str], words: str) -> None:
    assert verbs(actions) == words


def test_identical_answers_are_no_change() -> None:
    same = {"alice": {TOOL.key: {"list"}, RECORD.key: {"view"}}}
    assert changes(answers(same), answers(same)) == []
    text = render([], before="main (abc)", questions=QUESTIONS)
    assert text.startswith("no change in access between main (abc) and the working tree")
    assert f"{QUESTIONS.count} decisions compared" in text


def test_grants_come_first_whatever_the_principal_order() -> None:
    before = answers({"alice": {TOOL.key: {"list", "call"}}, "carol": {}})
    after = answers({"alice": {}, "carol": {TOOL.key: {"list", "call"}}})
    assert [sentence(c) for c in changes(before, after)] == [
        "carol: may now list and call suspend_account",
        "alice: may no longer list and call suspend_account",
    ]


def test_changes_are_ordered_by_principal_then_subject_within_a_kind() -> None:
    before = answers({})
    after = answers(
        {
            "mallory": {TOOL.key: {"list"}},
            "alice": {RECORD.key: {"close"}, RESOURCE.key: {"read"}},
        }
    )
    assert [sentence(c) for c in changes(before, after)] == [
        "alice: may now read resource ticket://{id}",
        "alice: may now close ticket record ticket_tier2_open",
        "mallory: may now list suspend_account",
    ]


def test_only_the_actions_that_changed_are_named() -> None:
    before = answers({"mallory": {TOOL.key: {"list", "call"}}})
    after = answers({"mallory": {TOOL.key: {"call"}}})
    (change,) = changes(before, after)
    assert change == Change("mallory", TOOL, ("list",), "revoke")
    assert sentence(change) == "mallory: may no longer list suspend_account"


def test_a_subject_known_at_one_revision_only_says_so() -> None:
    before = answers({"alice": {OLD_TOOL.key: {"call"}}})
    after = answers({})
    (change,) = changes(before, after)
    assert sentence(change) == "alice: may no longer call retired (only at v1 (abc))"


def test_confirmation_changes_come_after_grants_and_revocations() -> None:
    allowed = {"carol": {RECORD.key: {"view", "close"}}}
    before = answers(allowed, confirm={"carol": {RECORD.key: frozenset({"close"})}})
    after = answers(
        {"carol": {RECORD.key: {"view", "close"}}, "alice": {TOOL.key: {"call"}}},
        confirm={"carol": {RECORD.key: frozenset({"view"})}},
    )
    assert [sentence(c) for c in changes(before, after)] == [
        "alice: may now call suspend_account",
        "carol: may now close ticket record ticket_tier2_open without a person confirming it",
        "carol: may now view ticket record ticket_tier2_open only after a person confirms it",
    ]


def test_a_grant_that_needs_confirmation_says_so() -> None:
    after = answers(
        {"carol": {RECORD.key: {"view", "close"}}},
        confirm={"carol": {RECORD.key: frozenset({"close"})}},
    )
    assert [sentence(c) for c in changes(answers({}), after)] == [
        "carol: may now view ticket record ticket_tier2_open",
        "carol: may now close ticket record ticket_tier2_open after a person confirms it",
    ]


@pytest.mark.parametrize(
    ("was", "now", "kind"),
    [
        ("deny", "allow", ("grant", False)),
        ("deny", "confirm", ("grant", True)),
        ("allow", "deny", ("revoke", False)),
        ("confirm", "deny", ("revoke", False)),
        ("confirm", "allow", ("confirmation_dropped", False)),
        ("allow", "confirm", ("confirmation_added", False)),
        ("allow", "allow", None),
        ("deny", "deny", None),
    ],
)
def test_every_pair_of_effects_is_one_kind_of_change(
    was: Effect, now: Effect, kind: object
) -> None:
    assert change_of(was, now) == kind


def test_the_text_has_a_heading_per_kind_grants_first() -> None:
    before = answers({"alice": {TOOL.key: {"call"}}}, confirm={"alice": {TOOL.key: frozenset()}})
    after = answers({"carol": {TOOL.key: {"call"}}})
    text = render(changes(before, after), before="main (abc)", questions=QUESTIONS)
    lines = text.splitlines()
    assert lines[0] == "# Access changes from main (abc) to the working tree"
    assert [line for line in lines if line.startswith("## ")] == ["## Grants", "## Revocations"]
    assert lines.index("## Grants") < lines.index("- carol: may now call suspend_account")
    assert lines.index("## Revocations") < lines.index(
        "- alice: may no longer call suspend_account"
    )


def test_the_diff_asks_about_the_components_of_both_revisions(tmp_path: Path) -> None:
    settings = Settings(transport="stdio")
    current = registered_components(settings)
    kept, *added = current
    testdata = tmp_path / "tests" / "testdata"
    testdata.mkdir(parents=True)
    resources = {
        "kept": {"kind": kept.ref.kind, "id": kept.ref.id, "attr": dict(kept.ref.attributes)},
        "old": {"kind": "mcp_tool", "id": "old", "attr": {**kept.ref.attributes, "name": "old"}},
    }
    (testdata / "resources.yaml").write_text(dump_yaml({"resources": resources}))

    questions = diff_questions(settings, POLICIES, tmp_path, "v1")

    notes = {s.ref.id: s.note for s in questions.subjects if s.section != "record"}
    assert notes.pop(kept.ref.id) == ""
    assert notes.pop("old") == "only at v1"
    assert notes == {s.ref.id: "new since v1" for s in added}
    assert [s.key for s in questions.subjects if s.section == "record"] == [
        s.key for s in record_subjects(CAPABILITIES)
    ]
