"""``client.payloads``: the text payload the terminal client sends, and the one-line rendering
of every documented payload type, of unknown types and of payloads outside the conventions."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.payloads import MAX_FALLBACK_CHARS, describe, parse, safe, text


def j(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_text_is_the_documented_text_payload() -> None:
    assert text("hi ✓") == '{"type":1,"content":"hi ✓"}'.encode()
    # Undecodable input bytes (read with surrogateescape) cannot make a send fail.
    assert describe(text("a\udcff")) == "a?"
    assert parse(text("x")) == {"type": 1, "content": "x"}
    assert describe(text("hi ✓")) == "hi ✓"


@pytest.mark.parametrize(
    ("payload", "shown"),
    [
        (j(type=1, content="hello"), "hello"),
        (
            j(type=1, content="yes", reply={"from_uid": "bob", "message_seq": 3}),
            "(reply to bob) yes",
        ),
        (j(type=1), "[text without content]"),
        (j(type=2, url="https://x/a.png", width=640, height=480), "[image 640x480] https://x/a.png"),
        (j(type=2, url="https://x/a.png"), "[image] https://x/a.png"),
        (j(type=3, url="u", width=100.0, height=50), "[GIF 100x50] u"),
        (j(type=4, url="https://x/v.amr", timeTrad=12), "[voice 12 s] https://x/v.amr"),
        (j(type=5, url="u", second=30, width=1280, height=720), "[video 30 s 1280x720] u"),
        (j(type=6, title="Cafe", address="1 Main St", lat=48.85, lng=2.35),
         "[location Cafe 1 Main St (48.85, 2.35)]"),
        (j(type=6), "[location]"),
        (j(type=7, uid="u9", name="Ann"), "[contact card Ann (u9)]"),
        (j(type=8, url="https://x/r.pdf", name="report.pdf", size=12 * 1024),
         "[file report.pdf 12 KB] https://x/r.pdf"),
        (j(type=8, url="u", name="big.iso", size=3_670_016), "[file big.iso 3.5 MB] u"),
        (j(type=8, url="u", size=1), "[file 1 byte] u"),
        (j(type=99, cmd="groupUpdate", param={}), "[command groupUpdate]"),
        (j(type=1002, content="{0} added {1}", extra=[{"uid": "a", "name": "Alice"},
                                                      {"uid": "b"}]),
         "* Alice added b"),
        (j(type=1006, content="a message was revoked"), "* a message was revoked"),
        (j(type=1003), "[notice of type 1003]"),
        (j(type=14, content="rich"), "[type 14] rich"),
        (j(type=9, amount=5), "[message of type 9]"),
    ],
)  # fmt: skip
def test_each_type_reads_as_one_line(payload: bytes, shown: str) -> None:
    assert describe(payload) == shown


@pytest.mark.parametrize(
    ("payload", "shown"),
    [
        (b"plain words", "plain words"),  # not JSON: scripts and the HTTP API send raw text
        (b'{"no": "type"}', '{"no": "type"}'),
        (b'{"type": "1", "content": "x"}', '{"type": "1", "content": "x"}'),
        (b"[1, 2]", "[1, 2]"),
        (b"", "[empty message]"),
        (b"\xff\xfe\x00\x01", "[binary payload, 4 bytes]"),
        (bytes(range(128, 256)) * 20, "[binary payload, 2.5 KB]"),
    ],
)
def test_payloads_outside_the_conventions_get_a_short_fallback(payload: bytes, shown: str) -> None:
    assert describe(payload) == shown


def test_long_fallbacks_are_cut() -> None:
    shown = describe(b"x" * 5000)
    assert len(shown) == MAX_FALLBACK_CHARS and shown.endswith("…")
    # A text message's content is the message: it is shown whole.
    assert describe(text("y" * 5000)) == "y" * 5000


def test_nothing_reaches_the_terminal_that_it_would_act_on() -> None:
    # (JSON escapes can carry a lone surrogate, which no terminal could print.)
    shown = describe(j(type=1, content="a\x1b[2Jb\rc\x07d\u202ee\nf\ud800"))
    assert shown == "a\\x1b[2Jb\\x0dc\\x07d\\u202ee ⏎ f\\ud800"
    # Every field that is shown is cleaned, not only the content.
    assert "\x1b" not in describe(j(type=8, name="\x1b]0;pwned\x07", url="u\x1b"))
    assert "\x1b" not in describe(j(type=1002, content="{0}", extra=[{"name": "\x1b[31m"}]))


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _shown_as_is(ch: str) -> bool:
    """Printable, or a space of any kind (U+3000 in Chinese text is no threat to a terminal)."""
    return ch.isprintable() or unicodedata.category(ch) == "Zs"


def test_private_use_and_unassigned_code_points_are_escaped() -> None:
    assert safe("a\ue000b\ud7fc") == "a\\ue000b\\ud7fc"


@FAST
@given(st.binary(max_size=300))
def test_any_payload_renders_as_one_printable_line(payload: bytes) -> None:
    shown = describe(payload)
    assert shown and "\n" not in shown
    assert all(_shown_as_is(ch) for ch in shown)
    shown.encode("utf-8")  # no lone surrogates left


FIELDS = ["type", "content", "url", "name", "size", "width", "height", "extra", "reply", "cmd"]
VALUES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS), VALUES | st.lists(VALUES, max_size=3)))
def test_any_json_object_renders_as_one_printable_line(obj: dict[str, object]) -> None:
    shown = describe(json.dumps(obj).encode())
    assert shown and all(_shown_as_is(ch) for ch in shown)


def test_safe_keeps_printable_text() -> None:
    assert safe("héllo 世界 🎉") == "héllo 世界 🎉"
