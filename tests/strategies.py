"""Hypothesis strategies for the HTTP edge: adversarial request bodies, and valid JSON documents.

Adversarial bodies are built from a few drawn parameters (a shape, a length, a filler) rather than
drawn byte by byte, so that bodies at the size limit stay cheap to generate and shrink.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Bytes that matter to a JSON scanner, plus bytes that are not UTF-8 at all.
_SPECIAL = [b'"', b"\\", b"[", b"]", b"{", b"}", b",", b":", b"\x00", b"\xff", b"\xc0\xaf"]


def _filler() -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from(_SPECIAL), st.binary(min_size=1, max_size=8))


def _escape_run(n: int, closed: bool) -> bytes:
    return b'"' + b"\\" * n + (b'"' if closed else b"")


def _escaped_quotes(n: int, closed: bool) -> bytes:
    return b'"' + b'\\"' * (n // 2) + (b'"' if closed else b"")


def _unterminated_string(n: int, filler: bytes) -> bytes:
    return b'["' + (filler * (n // len(filler) + 1))[:n]


def _nesting(n: int, opener: bytes) -> bytes:
    return opener * max(1, n // len(opener))


def _many_keys(n: int) -> bytes:
    count = max(1, n // 8)
    return b"{" + b",".join(b'"k%d":0' % i for i in range(count)) + b"}"


def _invalid_utf8(n: int, filler: bytes) -> bytes:
    return b'{"a":"' + (b"\xff\xfe" + filler) * (n // (len(filler) + 2) + 1) + b'"}'


def _piece(max_size: int) -> st.SearchStrategy[bytes]:
    # Mostly near the limit (where a super-linear scan hurts), sometimes small.
    n = st.one_of(st.integers(0, 64), st.integers(max(0, max_size // 2), max_size))
    return st.one_of(
        st.builds(_escape_run, n, st.booleans()),
        st.builds(_escaped_quotes, n, st.booleans()),
        st.builds(_unterminated_string, n, _filler()),
        st.builds(_nesting, n, st.sampled_from([b"[", b"{", b'{"a":', b"[{", b'["\\"",'])),
        st.builds(_nesting, n, st.sampled_from([b"]", b"}", b"]}"])),
        st.builds(_many_keys, n),
        st.builds(_invalid_utf8, n, _filler()),
    )


def adversarial_bodies(max_size: int) -> st.SearchStrategy[bytes]:
    """Hostile bodies of at most ``max_size`` bytes: escape runs, unterminated strings, deep
    nesting, unbalanced brackets, invalid UTF-8, huge numbers of keys, and mixes of them."""
    mixed = st.lists(_piece(max_size // 2), min_size=2, max_size=4).map(b"".join)
    return st.one_of(_piece(max_size), mixed).map(lambda body: body[:max_size])


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """JSON documents whose strings are full of brackets, quotes and backslashes."""
    text = st.text(
        alphabet=st.one_of(st.sampled_from('[]{}"\\/,:'), st.characters(codec="utf-8")),
        max_size=12,
    )
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        text,
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=5), st.dictionaries(text, children, max_size=5)
        ),
        max_leaves=max_leaves,
    )


def encodings_of(value: Any) -> st.SearchStrategy[bytes]:
    """The document as a client could send it: ASCII-escaped or raw UTF-8, compact or spaced."""
    return st.builds(
        lambda ascii_only, indent, separators: json.dumps(
            value, ensure_ascii=ascii_only, indent=indent, separators=separators
        ).encode(),
        st.booleans(),
        st.sampled_from([None, 0, 2]),
        st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]),
    )


def nesting_depth(value: Any) -> int:
    """Depth by the reference parser's own structure: containers count, scalars do not."""
    if isinstance(value, list):
        return 1 + max((nesting_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((nesting_depth(v) for v in value.values()), default=0)
    return 0
