"""Records and the RocksDB store (a real database in ``tmp_path``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.storage import ChannelInfo, DeviceRecord, MessageRecord, Store, keys
from node.storage.db import StoreError, _prefix_end
from proto.wkproto import ChannelType

PERSON, GROUP = ChannelType.PERSON, ChannelType.GROUP

# --- records --------------------------------------------------------------------------------

short_text = st.text(max_size=40)
message_records = st.builds(
    MessageRecord,
    message_id=st.integers(-(2**63), 2**63 - 1),
    message_seq=st.integers(0, 2**64 - 1),
    timestamp_ms=st.integers(-(2**63), 2**63 - 1),
    channel_id=short_text,
    channel_type=st.integers(0, 255),
    from_uid=short_text,
    client_msg_no=short_text,
    payload=st.binary(max_size=200),
    setting=st.integers(0, 255),
    flags=st.integers(0, 255),
    expire=st.integers(0, 2**32 - 1),
    topic=short_text,
    stream_no=short_text,
)


@given(message_records)
def test_message_record_round_trip(rec: MessageRecord) -> None:
    assert MessageRecord.decode(rec.encode()) == rec


def test_message_record_unicode_and_empty_payload() -> None:
    rec = MessageRecord(
        message_id=1,
        message_seq=2,
        timestamp_ms=1_750_000_000_999,
        channel_id="李雷@józef",
        channel_type=PERSON,
        from_uid="józef",
        client_msg_no="🙂-1",
        payload=b"",
        topic="тема",
        stream_no="s\u200b",
    )
    assert MessageRecord.decode(rec.encode()) == rec
    assert rec.timestamp_s == 1_750_000_000


def test_message_record_payload_that_looks_like_a_header() -> None:
    payload = MessageRecord(1, 1, 1, "c", 2, "u", "n", b"inner").encode()
    rec = MessageRecord(9, 9, 9, "c", 2, "u", "n", payload)
    assert MessageRecord.decode(rec.encode()).payload == payload


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(
    st.builds(
        ChannelInfo,
        channel_id=st.text(max_size=30),
        channel_type=st.integers(0, 255),
        ban=st.booleans(),
        disband=st.booleans(),
        send_ban=st.booleans(),
        allow_stranger=st.booleans(),
        large=st.booleans(),
        extra=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    )
)
def test_channel_info_round_trip(info: ChannelInfo) -> None:
    assert ChannelInfo.decode(info.encode()) == info


@given(st.text(max_size=80), st.integers(0, 1))
def test_device_record_round_trip(token: str, level: int) -> None:
    rec = DeviceRecord(token=token, device_level=level)
    assert DeviceRecord.decode(rec.encode()) == rec


# --- the store ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "db")
    try:
        yield s
    finally:
        if hasattr(s, "_db"):
            s.close()


def msg(
    channel_id: str, seq: int, *, ctype: int = GROUP, from_uid: str = "u1", no: str = ""
) -> MessageRecord:
    return MessageRecord(
        message_id=1000 + seq,
        message_seq=seq,
        timestamp_ms=1_750_000_000_000 + seq,
        channel_id=channel_id,
        channel_type=ctype,
        from_uid=from_uid,
        client_msg_no=no,
        payload=f"m{seq}".encode(),
    )


def append(store: Store, *records: MessageRecord) -> None:
    wb = store.batch()
    for r in records:
        wb.append_message(r)
    store.write(wb)


def put_channel(store: Store, info: ChannelInfo, subs: list[str] | None = None) -> None:
    wb = store.batch()
    wb.put_channel(info)
    if subs:
        wb.add_subscribers(info.channel_type, info.channel_id, subs)
    store.write(wb)


def test_channel_put_get(store: Store) -> None:
    assert store.get_channel(GROUP, "g1") is None
    info = ChannelInfo("g1", GROUP, ban=True, extra={"name": "Gruppe Ü"})
    put_channel(store, info)
    assert store.get_channel(GROUP, "g1") == info
    # the type is part of the identity
    assert store.get_channel(PERSON, "g1") is None
    # overwrite
    put_channel(store, ChannelInfo("g1", GROUP, disband=True))
    got = store.get_channel(GROUP, "g1")
    assert got is not None and got.disband and not got.ban


def test_channel_row_under_a_foreign_key_is_detected(store: Store) -> None:
    """A stored row whose id does not match the key it was read under is a hash collision."""
    ck = keys.channel_key(GROUP, "g1")
    wb = store.batch()
    wb._put("channels", b"I" + ck, ChannelInfo("other", GROUP).encode())
    store.write(wb)
    with pytest.raises(StoreError, match="collision"):
        store.get_channel(GROUP, "g1")


def test_subscribers_add_remove_list(store: Store) -> None:
    assert store.subscribers(GROUP, "g1") == []
    wb = store.batch()
    wb.add_subscribers(GROUP, "g1", ["u3", "u1", "u2", "李雷"])
    store.write(wb)
    assert sorted(store.subscribers(GROUP, "g1")) == sorted(["u1", "u2", "u3", "李雷"])
    assert store.is_subscriber(GROUP, "g1", "u2")
    assert not store.is_subscriber(GROUP, "g1", "u4")
    wb = store.batch()
    wb.remove_subscribers(GROUP, "g1", ["u2", "never-there"])
    store.write(wb)
    assert sorted(store.subscribers(GROUP, "g1")) == sorted(["u1", "u3", "李雷"])
    assert not store.is_subscriber(GROUP, "g1", "u2")
    # adding twice keeps one entry
    wb = store.batch()
    wb.add_subscribers(GROUP, "g1", ["u1"])
    store.write(wb)
    assert sorted(store.subscribers(GROUP, "g1")) == sorted(["u1", "u3", "李雷"])


def _find_ids(pred_count: int = 60_000) -> tuple[tuple[str, str], str]:
    """Two group ids whose channel keys share their first three bytes (neighbours in key
    order), and one whose channel key ends in 0xFF (the prefix-end edge case)."""
    seen: dict[bytes, str] = {}
    pair: tuple[str, str] | None = None
    ff: str | None = None
    for i in range(pred_count):
        cid = f"g{i}"
        ck = keys.channel_key(GROUP, cid)
        if ff is None and ck[-1] == 0xFF:
            ff = cid
        if pair is None:
            if ck[:3] in seen:
                pair = (seen[ck[:3]], cid)
            seen[ck[:3]] = cid
        if pair and ff:
            return pair, ff
    raise AssertionError("no suitable ids found")


(NEAR_A, NEAR_B), FF_ID = _find_ids()


def test_prefix_end() -> None:
    assert _prefix_end(b"\x01\x02") == b"\x01\x03"
    assert _prefix_end(b"\x01\xff") == b"\x02"
    assert _prefix_end(b"\x01\xff\xff") == b"\x02"
    for p in (b"\x00", b"\x7f\xff", keys.channel_key(GROUP, FF_ID)):
        end = _prefix_end(p)
        assert end > p + b"\xff" * 16
        assert not end.startswith(p)


def test_subscriber_prefix_isolation_between_neighbouring_channels(store: Store) -> None:
    ck_a, ck_b = keys.channel_key(GROUP, NEAR_A), keys.channel_key(GROUP, NEAR_B)
    assert ck_a[:3] == ck_b[:3] and ck_a != ck_b
    wb = store.batch()
    wb.add_subscribers(GROUP, NEAR_A, ["a1", "a2"])
    wb.add_subscribers(GROUP, NEAR_B, ["b1"])
    wb.add_subscribers(GROUP, FF_ID, ["f1", "\U0010ffff"])
    wb.add_subscribers(PERSON, NEAR_A, ["p1"])
    store.write(wb)
    assert sorted(store.subscribers(GROUP, NEAR_A)) == ["a1", "a2"]
    assert store.subscribers(GROUP, NEAR_B) == ["b1"]
    assert sorted(store.subscribers(GROUP, FF_ID)) == sorted(["f1", "\U0010ffff"])
    assert store.subscribers(PERSON, NEAR_A) == ["p1"]
    assert not store.is_subscriber(GROUP, NEAR_B, "a1")


def test_message_prefix_isolation_between_neighbouring_channels(store: Store) -> None:
    append(store, *(msg(NEAR_A, s) for s in range(1, 4)))
    append(store, *(msg(NEAR_B, s) for s in range(1, 3)))
    append(store, *(msg(FF_ID, s) for s in range(1, 6)))
    assert [m.message_seq for m in store.messages(GROUP, NEAR_A, 0, 0, 100)] == [1, 2, 3]
    assert [m.channel_id for m in store.messages(GROUP, NEAR_B, 0, 0, 100)] == [NEAR_B] * 2
    got = store.messages(GROUP, FF_ID, 0, 0, 100)
    assert [(m.channel_id, m.message_seq) for m in got] == [(FF_ID, s) for s in range(1, 6)]


def test_head_seq_and_append_message_is_atomic(store: Store) -> None:
    assert store.head_seq(GROUP, "g1") == 0
    r = msg("g1", 1, no="c-1")
    append(store, r)
    assert store.head_seq(GROUP, "g1") == 1
    assert store.get_message(GROUP, "g1", 1) == r
    assert store.get_dedupe(GROUP, "g1", "u1", "c-1") == (r.message_id, 1)
    assert store.get_dedupe(GROUP, "g1", "u2", "c-1") is None
    assert store.get_dedupe(GROUP, "g2", "u1", "c-1") is None


def test_unwritten_batch_changes_nothing(store: Store) -> None:
    wb = store.batch()
    wb.append_message(msg("g1", 1, no="c-1"))
    wb.put_channel(ChannelInfo("g1", GROUP))
    del wb
    assert store.head_seq(GROUP, "g1") == 0
    assert store.get_message(GROUP, "g1", 1) is None
    assert store.get_dedupe(GROUP, "g1", "u1", "c-1") is None
    assert store.get_channel(GROUP, "g1") is None


def test_message_without_client_msg_no_has_no_dedupe(store: Store) -> None:
    append(store, msg("g1", 1, no=""))
    assert store.get_dedupe(GROUP, "g1", "u1", "") is None


def test_dedupe_key_does_not_confuse_uid_and_client_msg_no(store: Store) -> None:
    append(store, msg("g1", 1, from_uid="ab", no="c"))
    assert store.get_dedupe(GROUP, "g1", "a", "bc") is None
    assert store.get_dedupe(GROUP, "g1", "ab", "c") is not None


def test_head_follows_the_last_append_in_a_batch(store: Store) -> None:
    append(store, *(msg("g1", s) for s in range(1, 301)))
    assert store.head_seq(GROUP, "g1") == 300
    assert store.head_seq(GROUP, "g2") == 0


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One read-only store shared by the range tests (opening a database costs ~0.1 s)."""
    store = Store(tmp_path_factory.mktemp("filled") / "db")
    # more than 256 messages, so that seq keys differ in more than their last byte
    append(store, *(msg("g1", s) for s in range(1, 301)))
    append(store, *(msg("g0", s) for s in range(1, 4)))
    append(store, *(msg("g2", s) for s in range(1, 4)))
    try:
        yield store
    finally:
        store.close()


def seqs(records: list[MessageRecord]) -> list[int]:
    return [r.message_seq for r in records]


@pytest.mark.parametrize(
    ("start", "end", "limit", "expected"),
    [
        (0, 0, 1000, list(range(1, 301))),  # everything
        (1, 0, 5, [1, 2, 3, 4, 5]),  # limit
        (10, 13, 100, [10, 11, 12]),  # end is exclusive
        (10, 11, 100, [10]),
        (10, 10, 100, []),
        (255, 259, 100, [255, 256, 257, 258]),  # across a byte boundary
        (298, 0, 100, [298, 299, 300]),  # end 0 = unbounded
        (301, 0, 100, []),
        (0, 3, 100, [1, 2]),
        (-5, 3, 100, [1, 2]),
        (5, 0, 0, []),
        (1, 1000, 2, [1, 2]),
    ],
)
def test_messages_ranges(
    filled: Store, start: int, end: int, limit: int, expected: list[int]
) -> None:
    got = filled.messages(GROUP, "g1", start, end, limit)
    assert seqs(got) == expected
    assert all(r.channel_id == "g1" for r in got)


def test_messages_of_an_empty_channel(filled: Store) -> None:
    assert filled.messages(GROUP, "nothing", 0, 0, 100) == []
    assert filled.messages(PERSON, "g1", 0, 0, 100) == []


def test_get_message(filled: Store) -> None:
    got = filled.get_message(GROUP, "g1", 256)
    assert got is not None and got.payload == b"m256"
    assert filled.get_message(GROUP, "g1", 0) is None
    assert filled.get_message(GROUP, "g1", 301) is None
    assert filled.get_message(PERSON, "g1", 1) is None


def test_get_device(store: Store) -> None:
    assert store.get_device("u1", 0) is None
    wb = store.batch()
    wb.put_device("u1", 0, DeviceRecord("tok-app", 1))
    wb.put_device("u1", 1, DeviceRecord("tok-web", 0))
    wb.put_device("u10", 0, DeviceRecord("other", 0))
    store.write(wb)
    assert store.get_device("u1", 0) == DeviceRecord("tok-app", 1)
    assert store.get_device("u1", 1) == DeviceRecord("tok-web", 0)
    assert store.get_device("u1", 2) is None
    assert store.get_device("u10", 0) == DeviceRecord("other", 0)


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = Store(path)
    put_channel(store, ChannelInfo("g1", GROUP, large=True), ["u1", "u2"])
    append(store, *(msg("g1", s, no=f"n{s}") for s in range(1, 11)))
    wb = store.batch()
    wb.put_device("u1", 2, DeviceRecord("t", 1))
    store.write(wb)
    store.flush_wal()
    store.close()

    for _ in range(2):  # reopen twice: close() must release the lock every time
        again = Store(path)
        try:
            info = again.get_channel(GROUP, "g1")
            assert info is not None and info.large
            assert sorted(again.subscribers(GROUP, "g1")) == ["u1", "u2"]
            assert again.head_seq(GROUP, "g1") == 10
            assert seqs(again.messages(GROUP, "g1", 0, 0, 100)) == list(range(1, 11))
            assert again.get_dedupe(GROUP, "g1", "u1", "n7") == (1007, 7)
            assert again.get_device("u1", 2) == DeviceRecord("t", 1)
        finally:
            again.close()


def test_reopen_after_reads_that_used_iterators(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = Store(path)
    append(store, *(msg("g1", s) for s in range(1, 5)))
    assert len(store.messages(GROUP, "g1", 0, 0, 2)) == 2  # iterator stopped early
    it = iter(store._prefix(store._cf["messages"], keys.channel_key(GROUP, "g1")))
    next(it)
    del it
    store.close()
    again = Store(path)
    try:
        assert again.head_seq(GROUP, "g1") == 4
    finally:
        again.close()


def test_channel_keys_are_fixed_width_and_type_sensitive() -> None:
    ids = ["", "g", "x" * 64, "李雷@józef"]
    for cid, ctype in itertools.product(ids, (PERSON, GROUP)):
        assert len(keys.channel_key(ctype, cid)) == keys.CHANNEL_KEY_LEN
    assert keys.channel_key(PERSON, "g") != keys.channel_key(GROUP, "g")
    ck = keys.channel_key(GROUP, "g")
    assert keys.seq_of_message_key(keys.message_key(ck, 2**40 + 5)) == 2**40 + 5
    assert keys.message_key(ck, 255) < keys.message_key(ck, 256)
