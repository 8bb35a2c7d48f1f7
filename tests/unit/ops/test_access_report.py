"""`make access-report` asks about what the server registers and what the policy suites test,
and writes down exactly what the PDP answered. (tests/e2e/ops/test_access_report.py asks a real
PDP.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from ops.access_diff import ref_components
from ops.access_report import (
    Answers,
    Questions,
    Subject,
    component_subjects,
    policy_principals,
    record_subjects,
    to_json,
    to_markdown,
    with_subjects,
)
from ops.dev_issuer import demo_principals
from ops.policy_suites import POLICY_TESTS, dump_yaml, fixtures, load_yaml
from server.authz import components
from server.authz.decisions import ResourceRef
from server.capability import Capability
from tools import CAPABILITIES


def test_the_principals_are_the_demo_principals_as_the_server_builds_them() -> None:
    principals = policy_principals()
    assert list(principals) == list(demo_principals())
    for name, principal in principals.items():
        assert principal.id == name
        assert list(principal.roles) == demo_principals()[name]["roles"]


def test_each_component_is_asked_list_and_its_use_action() -> None:
    refs = {t: [ResourceRef(components.KIND[t], f"x_{t}")] for t in ("tool", "resource", "prompt")}
    assert [(s.section, s.actions) for s in component_subjects(refs)] == [
        ("tool", ("list", "call")),
        ("resource", ("list", "read")),
        ("prompt", ("list", "get")),
    ]


def test_record_examples_are_every_record_fixture_of_the_suites() -> None:
    declared = {r.kind for c in CAPABILITIES for r in c.records}
    expected = set()
    for suite_file in POLICY_TESTS.glob("*_test.yaml"):
        resources, _ = fixtures(load_yaml(suite_file))
        expected |= {(f["kind"], f["id"]) for f in resources.values() if f["kind"] in declared}
    subjects = record_subjects(CAPABILITIES)
    assert {s.key for s in subjects} == expected
    assert len(subjects) == len(expected), "each example once"
    owner = {r.kind: c.name for c in CAPABILITIES for r in c.records}
    assert all(s.capability == owner[s.ref.kind] and s.actions for s in subjects)


def suite_with_two_tests(tmp_path: Path, capability: Capability) -> Path:
    kind = capability.records[0].kind
    (tmp_path / "testdata").mkdir()
    suite = {
        "name": "S",
        "resources": {
            "r1": {"kind": kind, "id": "r1", "attr": {"a": 1}},
            "other": {"kind": "not_a_record_kind", "id": "other", "attr": {}},
        },
        "resourceGroups": {"g": {"resources": ["r1", "other"]}},
        "tests": [
            {"name": "one", "input": {"resources": ["r1"], "actions": ["view", "update"]}},
            {"name": "two", "input": {"resourceGroups": ["g"], "actions": ["update", "delete"]}},
        ],
    }
    (tmp_path / "s_test.yaml").write_text(dump_yaml(suite))
    return tmp_path


def test_a_record_example_is_asked_every_action_any_test_asks_about_it(tmp_path: Path) -> None:
    capability = CAPABILITIES[0]
    (subject,) = record_subjects(CAPABILITIES, suite_with_two_tests(tmp_path, capability))
    assert subject.ref == ResourceRef(capability.records[0].kind, "r1", {"a": 1})
    assert subject.actions == ("view", "update", "delete")
    assert subject.capability == capability.name


def test_subjects_known_only_elsewhere_are_added_and_shared_ones_merged() -> None:
    tool = Subject("tool", ResourceRef("mcp_tool", "t"), ("list", "call"))
    record = Subject("record", ResourceRef("ticket", "r"), ("view",))
    base = Questions(principals=policy_principals(), subjects=(tool, record))
    extra = [
        Subject("record", ResourceRef("ticket", "r"), ("view", "close"), note="x"),
        Subject("tool", ResourceRef("mcp_tool", "old"), ("list", "call"), note="only at v1"),
    ]
    merged = with_subjects(base, extra)
    assert [(s.ref.id, s.actions, s.note) for s in merged.subjects] == [
        ("t", ("list", "call"), ""),
        ("old", ("list", "call"), "only at v1"),
        ("r", ("view", "close"), ""),
    ]


def test_components_of_another_revision_come_from_its_generated_fixtures(tmp_path: Path) -> None:
    testdata = tmp_path / "tests" / "testdata"
    testdata.mkdir(parents=True)
    attr = {"name": "n", "tags": [], "sensitivity": "internal", "read_only": True}
    resources = {
        "tool_old": {"kind": "mcp_tool", "id": "old", "attr": {**attr, "department": "support"}},
        "prompt_p": {"kind": "mcp_prompt", "id": "p", "attr": {**attr, "department": "it"}},
        "tool_unregistered": {
            "kind": "mcp_tool",
            "id": "drop_database",
            "attr": {**attr, "department": components.UNREGISTERED},
        },
        "a_record": {"kind": "ticket", "id": "t1", "attr": {}},
    }
    (testdata / "resources.yaml").write_text(dump_yaml({"resources": resources}))
    found = ref_components(tmp_path, note="only at v1")
    assert [(s.section, s.ref.id, s.actions, s.note) for s in found] == [
        ("tool", "old", ("list", "call"), "only at v1"),
        ("prompt", "p", ("list", "get"), "only at v1"),
    ]
    assert found[0].ref.attributes == resources["tool_old"]["attr"]


def sample_answers() -> Answers:
    tool = Subject("tool", ResourceRef("mcp_tool", "issue_refund"), ("list", "call"))
    refund = Subject(
        "record",
        ResourceRef("account", "refund_600", {"amount": 600, "region": "eu"}),
        ("refund",),
        capability="accounts",
    )
    small = Subject(
        "record",
        ResourceRef("account", "refund_400", {"amount": 400, "region": "eu"}),
        ("refund",),
        capability="accounts",
    )
    principals = policy_principals()
    first, second = list(principals)[:2]
    return Answers(
        questions=Questions(principals=principals, subjects=(tool, refund, small)),
        allowed={
            first: {
                tool.key: frozenset({"list", "call"}),
                refund.key: frozenset({"refund"}),
                small.key: frozenset({"refund"}),
            },
            second: {tool.key: frozenset({"list"})},
        },
        confirm={first: {refund.key: frozenset({"refund"})}},
        pdp_address="127.0.0.1:4242",
        asked_at=datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC),
        request_id="access-report-x",
    )


def test_the_markdown_says_where_and_when_and_lists_what_was_allowed() -> None:
    answers = sample_answers()
    names = list(answers.questions.principals)
    text = to_markdown(answers)
    assert "`127.0.0.1:4242` on 2030-05-06 07:08:09 UTC" in text
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in text.splitlines()}
    tool_cells = rows["`issue_refund`"].strip("| ").split(" | ")[1:]
    assert tool_cells == ["list, call", "list", *["—"] * (len(names) - 2)]
    refund_cells = rows["`refund_600`"].strip("| ").split(" | ")
    assert refund_cells[1:4] == ["amount=600", "refund", "refund (*confirm*)"]
    assert "Every example has region=eu." in text


def test_the_json_holds_every_decision() -> None:
    answers = sample_answers()
    first, second, *rest = answers.questions.principals
    data = json.loads(json.dumps(to_json(answers)))
    assert data["pdp_address"] == "127.0.0.1:4242"
    assert data["asked_at"] == "2030-05-06T07:08:09Z"
    (tool,) = data["components"]
    assert tool["decisions"][first] == {"list": "ALLOW", "call": "ALLOW"}
    assert tool["decisions"][second] == {"list": "ALLOW", "call": "DENY"}
    assert all(tool["decisions"][p] == {"list": "DENY", "call": "DENY"} for p in rest)
    refund = next(r for r in data["records"] if r["example"] == "refund_600")
    assert refund["decisions"][first] == {"refund": "ALLOW_AFTER_CONFIRMATION"}
    assert refund["capability"] == "accounts"
