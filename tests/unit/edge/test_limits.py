"""The JSON depth scan of the HTTP edge: brackets inside strings do not count, and the work is
linear in the body whatever its content (it runs before authentication)."""

from __future__ import annotations

from server.edge.limits import json_depth
from tests.support import hostile_bodies


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
