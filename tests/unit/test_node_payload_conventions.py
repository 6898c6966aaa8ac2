"""The payload conventions: which payloads are typed, what each type needs, and the
recommended flags of system notices and commands."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from node import payload_conventions as pc
from proto.wkproto import HeaderFlag


def typed(obj: object) -> dict[str, object] | None:
    return pc.parse(json.dumps(obj).encode())


@given(st.binary(max_size=200))
def test_parse_never_raises_and_only_types_json_objects(raw: bytes) -> None:
    out = pc.parse(raw)
    assert out is None or isinstance(out["type"], int)


def test_a_payload_nested_deeper_than_the_parser_recurses_is_opaque() -> None:
    # 6,000 levels fit the default 12 KiB payload limit and exceed Python's recursion limit.
    deep = b'{"type":1,"content":"x","a":' + b"[" * 6000 + b"]" * 6000 + b"}"
    assert pc.parse(deep) is None


def test_untyped_payloads_are_opaque() -> None:
    for obj in ([1, 2], {"type": "1"}, {"type": True}, {"content": "x"}, "text"):
        assert typed(obj) is None
    assert pc.parse(b"\xff{") is None


def test_each_documented_type_needs_its_fields() -> None:
    good = [
        {"type": 1, "content": "hi", "mention": {"all": 1}, "reply": {"message_seq": 3}},
        {"type": 2, "url": "u", "width": 10.0, "height": 5},
        {"type": 4, "url": "u", "timeTrad": 3},
        {"type": 8, "url": "u", "name": "a.txt", "size": 10},
        {"type": 99, "cmd": "groupUpdate", "param": {}},
        {"type": 6, "anything": True},
        {"type": 1001, "content": "{0} created the group"},
    ]
    for obj in good:
        parsed = typed(obj)
        assert parsed is not None and pc.problem(parsed) is None, obj
    assert pc.problem({"type": 2, "url": "u", "width": True}) is not None  # not a number
    assert "1000" in (
        pc.problem({"type": 1, "content": "x", "mention": {"uids": ["u"] * 1001}}) or ""
    )


def test_recommended_flags() -> None:
    assert pc.recommended_flags(typed({"type": 1002})) == HeaderFlag.SYNC_ONCE
    assert pc.recommended_flags(typed({"type": 1010})) == HeaderFlag.RED_DOT
    assert pc.recommended_flags(typed({"type": 99, "cmd": "x"})) == HeaderFlag.SYNC_ONCE
    assert pc.recommended_flags(typed({"type": 1011})) is None  # undocumented: no advice
    assert pc.recommended_flags(typed({"type": 1, "content": "x"})) is None
    assert pc.is_system_type(typed({"type": 1001})) and not pc.is_system_type(typed({"type": 99}))
