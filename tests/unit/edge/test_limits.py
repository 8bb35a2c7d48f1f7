"""The JSON depth scan of the HTTP edge: brackets inside strings do not count, it agrees with a
real parser on valid JSON, and its work is linear in the body whatever its content."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.edge.limits import _JSON_STRING, json_depth
from tests.strategies import adversarial_bodies, encodings_of, json_values, nesting_depth
from tests.support import hostile_bodies

# Shrinking and generating bodies near the size limit is slower than hypothesis expects.
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth(b'{"a": "[[[[{{{{", "b": [1, [2]]}') == 3
    assert json_depth(b'{"a": "\\"[[[["}') == 1
    assert json_depth(b"[]") == 1
    assert json_depth(b"") == 0
    assert json_depth(b'["unterminated [[[') == 1
    assert json_depth(b'[["\\\\"]') == 2  # an escaped backslash ends before the quote


def test_hostile_bodies_are_scanned_without_backtracking() -> None:
    """Each body is one string run to its end: depth 0, and no byte scanned twice (the former
    pattern took minutes on these)."""
    for name, body in hostile_bodies(256 * 1024).items():
        assert json_depth(body) == 0, name


@PROPERTY
@given(json_values().flatmap(lambda v: st.tuples(st.just(v), encodings_of(v))))
def test_json_depth_agrees_with_a_real_parser_on_valid_json(case: tuple[object, bytes]) -> None:
    _, body = case
    assert json_depth(body) == nesting_depth(json.loads(body))


@PROPERTY
@given(st.one_of(adversarial_bodies(1024), st.binary(max_size=256)))
def test_every_quote_starts_or_continues_a_string_match(body: bytes) -> None:
    """Why the scan is linear, checked structurally rather than by the clock.

    The string pattern uses possessive quantifiers only, so one match attempt never backtracks:
    it reads forward once. A failed attempt is what makes a scan quadratic (the engine then
    retries at the next byte, re-reading what it read); an attempt can only start at a quote,
    and here every attempt at a quote succeeds, to the closing quote or to the end of the body.
    So the matches are disjoint, cover every quote, and each byte is read a bounded number of
    times: O(n) for any body.
    """
    covered = 0
    for match in _JSON_STRING.finditer(body):
        assert b'"' not in body[covered : match.start()]  # no quote skipped between matches
        covered = match.end()
    assert b'"' not in body[covered:]
    for at in range(len(body)):
        if body[at] == ord('"'):
            assert _JSON_STRING.match(body, at) is not None  # an attempt at a quote never fails


@PROPERTY
@given(adversarial_bodies(16 * 1024))
def test_any_body_gets_a_depth_without_error(body: bytes) -> None:
    depth = json_depth(body)
    assert 0 <= depth <= body.count(b"[") + body.count(b"{")


def _best_of(runs: int, work: Callable[[], object]) -> float:
    """The fastest of ``runs``: load on the machine only ever adds time, so the minimum is the
    most faithful measure of the work itself."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def test_the_scan_grows_linearly_on_the_worst_known_shapes() -> None:
    """A loose complexity check, not a speed claim: 16 times the input may take at most 64
    times as long (linear is 16, quadratic 256), measured as the best of five runs. (The
    former, backtracking pattern took about 200 times as long here.)"""
    small, large = 1024, 16 * 1024
    shapes: dict[str, Callable[[int], bytes]] = {
        **{name: (lambda n, name=name: hostile_bodies(n)[name]) for name in hostile_bodies(8)},
        "escape run": lambda n: b'"' + b"\\" * (n - 1),
        "nesting": lambda n: b"[" * n,
        "many short strings": lambda n: b'"",' * (n // 3),
        "invalid UTF-8 in a string": lambda n: b'"' + b"\xff\xfe" * (n // 2),
    }
    for name, shape in shapes.items():
        small_body, large_body = shape(small), shape(large)
        ratio = _best_of(5, lambda b=large_body: json_depth(b)) / max(
            _best_of(5, lambda b=small_body: json_depth(b)), 1e-6
        )
        assert ratio < 64, f"{name}: 16x the input took {ratio:.0f}x the time"
