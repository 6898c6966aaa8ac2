"""Channel identity: person channel ids (reference §3.2), uid validation, recipient views."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from node.channels import (
    MAX_ID_BYTES,
    canonical_channel_id,
    id_problem,
    person_channel_id,
    person_parties,
    recipients,
    view_channel_id,
)
from proto.wkproto import ChannelType

PERSON = ChannelType.PERSON
GROUP = ChannelType.GROUP

# uids as the server accepts them (no reserved characters, no whitespace/control characters)
uids = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="@#&"
    ),
    min_size=1,
    max_size=16,
).filter(lambda s: id_problem(s) is None)


# --- person_channel_id ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [("u1", "u2", "u2@u1"), ("alice", "bob", "bob@alice")],
)
def test_reference_examples(a: str, b: str, expected: str) -> None:
    assert person_channel_id(a, b) == expected
    assert person_channel_id(b, a) == expected


def test_larger_crc32_goes_first() -> None:
    # the reference quotes these hashes; the rule must follow them, not string order
    assert zlib.crc32(b"u2") > zlib.crc32(b"u1")
    assert zlib.crc32(b"bob") > zlib.crc32(b"alice")
    # "b" > "a" as strings, but crc32("a") > crc32("b"): the hash must win
    assert zlib.crc32(b"a") > zlib.crc32(b"b")
    assert person_channel_id("a", "b") == "a@b"
    assert person_channel_id("b", "a") == "a@b"


@given(uids, uids)
def test_symmetric_and_contains_both(a: str, b: str) -> None:
    cid = person_channel_id(a, b)
    assert cid == person_channel_id(b, a)
    first, second = person_parties(cid)
    assert sorted([first, second]) == sorted([a, b])
    assert zlib.crc32(first.encode()) >= zlib.crc32(second.encode())


def test_same_uid_twice() -> None:
    assert person_channel_id("u1", "u1") == "u1@u1"
    assert recipients("u1@u1", PERSON, []) == ["u1"]


def test_hash_is_over_utf8_bytes() -> None:
    a, b = "józef", "李雷"
    expected_first = a if zlib.crc32(a.encode()) > zlib.crc32(b.encode()) else b
    assert person_channel_id(a, b).split("@")[0] == expected_first


# --- canonical_channel_id -------------------------------------------------------------------


def test_canonical_from_peer_uid() -> None:
    assert canonical_channel_id("u1", "u2", PERSON) == "u2@u1"
    assert canonical_channel_id("u2", "u1", PERSON) == "u2@u1"
    assert canonical_channel_id("alice", "bob", PERSON) == "bob@alice"


@pytest.mark.parametrize("given_id", ["u2@u1", "u1@u2"])
@pytest.mark.parametrize("sender", ["u1", "u2"])
def test_canonical_from_a_b_form(sender: str, given_id: str) -> None:
    assert canonical_channel_id(sender, given_id, PERSON) == "u2@u1"


@pytest.mark.parametrize("given_id", ["u2@u1", "u3@u4"])
def test_canonical_rejects_a_sender_that_is_not_a_party(given_id: str) -> None:
    with pytest.raises(ValueError):
        canonical_channel_id("mallory", given_id, PERSON)


@pytest.mark.parametrize("bad", ["@u1", "u1@", "@"])
def test_canonical_rejects_malformed_person_ids(bad: str) -> None:
    with pytest.raises(ValueError):
        canonical_channel_id("u1", bad, PERSON)


def test_canonical_leaves_other_channel_types_alone() -> None:
    assert canonical_channel_id("u1", "g1", GROUP) == "g1"
    assert canonical_channel_id("u1", "x@y", GROUP) == "x@y"


@given(uids, uids)
def test_canonical_agrees_for_both_senders(a: str, b: str) -> None:
    cid = canonical_channel_id(a, b, PERSON)
    assert cid == canonical_channel_id(b, a, PERSON)
    assert canonical_channel_id(a, cid, PERSON) == cid
    assert canonical_channel_id(b, cid, PERSON) == cid


# --- view_channel_id ------------------------------------------------------------------------


def test_view_is_the_other_party() -> None:
    assert view_channel_id("u2@u1", PERSON, "u1") == "u2"
    assert view_channel_id("u2@u1", PERSON, "u2") == "u1"


@given(uids, uids)
def test_view_round_trips_to_the_canonical_id(a: str, b: str) -> None:
    assume(a != b)
    cid = person_channel_id(a, b)
    assert view_channel_id(cid, PERSON, a) == b
    assert view_channel_id(cid, PERSON, b) == a
    # what a recipient sees is what it would send back to reach the same channel
    assert canonical_channel_id(a, view_channel_id(cid, PERSON, a), PERSON) == cid


def test_view_of_a_group_is_the_group() -> None:
    assert view_channel_id("g1", GROUP, "u1") == "g1"


# --- id_problem -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "good",
    ["u1", "alice", "user_123", "a-b.c", "李雷", "x" * MAX_ID_BYTES, "é" * (MAX_ID_BYTES // 2)],
)
def test_accepts_normal_ids(good: str) -> None:
    assert id_problem(good) is None


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("", "empty"),
        ("x" * (MAX_ID_BYTES + 1), "longer"),
        ("é" * (MAX_ID_BYTES // 2) + "x", "longer"),  # 65 bytes, 33 characters
        ("a@b", "@"),
        ("a#b", "#"),
        ("a&b", "&"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("ab\n", "whitespace"),
        ("\u3000ab", "whitespace"),  # ideographic space
        ("a\x00b", "control"),
        ("a\x1bb", "control"),
        ("a\x1fb", "control"),
        # A lone surrogate (a JSON body's "\\ud800") has no UTF-8 form: refused, not raised.
        ("\ud800", "control"),
        ("a\udfffb", "control"),
    ],
)
def test_rejects(bad: str, words: str) -> None:
    problem = id_problem(bad)
    assert problem is not None
    assert words in problem


def test_problem_names_what_was_checked() -> None:
    assert id_problem("", "channel_id") == "channel_id is empty"


def test_reserved_characters_listed_sorted() -> None:
    problem = id_problem("a&b#c@")
    assert problem is not None
    assert problem.endswith("#&@")


@pytest.mark.parametrize(
    "bad",
    [
        "a\x7fb",  # DEL, used to pass (only ord < 0x20 was checked)
        "a\x80b",  # C1 controls
        "a\x9bb",
        "a\u200bb",  # zero-width space (format)
        "a\ufeffb",  # BOM
        "a\ue000b",  # private use
    ],
)
def test_rejects_del_c1_and_invisible_characters(bad: str) -> None:
    problem = id_problem(bad)
    assert problem is not None and "control" in problem


# --- recipients -----------------------------------------------------------------------------


def test_recipients_of_a_person_channel_are_both_parties() -> None:
    assert sorted(recipients("u2@u1", PERSON, ["ignored"])) == ["u1", "u2"]


def test_recipients_of_a_group_are_its_subscribers() -> None:
    subs = ["u1", "u2", "u3"]
    assert recipients("g1", GROUP, subs) == subs
    assert recipients("g1", GROUP, []) == []


def test_recipients_of_a_malformed_person_id() -> None:
    with pytest.raises(ValueError):
        recipients("nobody", PERSON, [])
