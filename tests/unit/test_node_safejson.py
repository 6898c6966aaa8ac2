"""JSON from untrusted input: the nesting scan against a reference, and every failure of
``json.loads`` turned into a ``JsonRefused`` with a message."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import safejson
from node.safejson import JsonBeyondLimits, JsonInvalid, nesting_depth

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab[]{}"\\\n é'),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@given(json_values, st.booleans(), st.integers(min_value=1, max_value=8))
def test_nesting_depth_matches_the_parsed_document(value: Any, ascii_only: bool, cap: int) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nesting_depth(raw) == depth(value)
    assert (nesting_depth(raw, cap) > cap) == (depth(value) > cap)


@given(st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b"1", b","]), max_size=60))
def test_unpaired_brackets_count_as_deep_as_the_parser_would_go(parts: list[bytes]) -> None:
    raw = b"".join(parts)
    open_now = highest = 0
    for b in raw:
        open_now += {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}.get(b, 0)
        highest = max(highest, open_now)
    assert nesting_depth(raw) >= highest


def test_brackets_in_strings_and_escapes_do_not_count() -> None:
    assert nesting_depth(b'["[[[[", "\\"[[[", "\\\\", {"k]": "{{"}]') == 2
    assert nesting_depth(b"12") == 0


def test_a_document_at_the_limit_parses_and_one_deeper_is_refused() -> None:
    assert safejson.loads(b"[" * 64 + b"]" * 64, 64) is not None
    with pytest.raises(JsonBeyondLimits, match="nested deeper than 64 levels"):
        safejson.loads(b"[" * 65 + b"]" * 65, 64)
    # Many brackets side by side are not depth.
    assert len(safejson.loads(b"[" + b"[]," * 10_000 + b"[]]", 4)) == 10_001


def test_deep_nesting_is_refused_without_recursion_and_quickly() -> None:
    deep = b'{"a":' * 500_000 + b"1" + b"}" * 500_000  # 3 MB
    started = time.perf_counter()
    with pytest.raises(JsonBeyondLimits, match="nested deeper than 64"):
        safejson.loads(deep, 64)
    assert time.perf_counter() - started < 2.0
    # Unbalanced: never closed, still refused as too deep, not a RecursionError.
    with pytest.raises(JsonBeyondLimits):
        safejson.loads(b"[" * 100_000, 64)


def test_a_number_of_a_million_digits_is_refused() -> None:
    with pytest.raises(JsonBeyondLimits, match="more than 4300 digits"):
        safejson.loads(b'{"n":' + b"1" * 1_000_000 + b"}", 64)
    assert safejson.loads(b"1" * 4300, 64) == int("1" * 4300)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"a": 1} x', "Extra data"),
        (b'{"a": "\xff"}', "not valid utf-8"),
    ],
)
def test_malformed_input_is_invalid_with_a_message(raw: bytes, words: str) -> None:
    with pytest.raises(JsonInvalid, match=words):
        safejson.loads(raw, 64)


def test_other_encodings_and_text_parse_like_json_loads() -> None:
    doc = {"k": ["é", 1]}
    for raw in (json.dumps(doc).encode("utf-16"), b"\xef\xbb\xbf" + json.dumps(doc).encode()):
        assert safejson.loads(raw, 2) == doc
    assert safejson.loads(json.dumps(doc), 2) == doc
    with pytest.raises(JsonBeyondLimits):
        safejson.loads(json.dumps(doc).encode("utf-16"), 1)


def test_the_limit_itself_is_bounded() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        safejson.loads(b"1", safejson.ABSOLUTE_MAX_DEPTH + 1)
