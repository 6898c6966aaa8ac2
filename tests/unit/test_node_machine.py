"""The slot group's state machine against a real RocksDB store, without Raft.

Commands are applied with explicit Raft indexes, as the driver thread does; every behaviour the
old single-node send pipeline guaranteed (contiguous seqs, dedupe, permissions, transient
messages) must now hold for ``GroupMachine.apply``, deterministically on every replica.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.invariant import InvariantViolation
from node.groups import machine as machine_module
from node.groups.machine import GroupMachine, next_message_id, record_from_pb
from node.groups.reads import QueryError, run_query
from node.ids import EPOCH_MS
from node.pipeline_rules import MAX_CLIENT_MSG_NO_BYTES, SYSTEM_UID
from node.storage import Store
from node.usertokens import Checked, TokenKeys, Verdict
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, HeaderFlag, ReasonCode

PERSON, GROUP = int(ChannelType.PERSON), int(ChannelType.GROUP)
T0 = EPOCH_MS + 1_000_000_000  # some leader clock, in ms
SHIFT = 22  # 12 bits of counter + 10 bits of group


# --- helpers ----------------------------------------------------------------------------------


class Feeder:
    """A machine plus the next Raft index, as the driver would hand them out."""

    def __init__(self, machine: GroupMachine) -> None:
        self.machine = machine
        self.store = machine.store
        self.index = machine.applied_index()

    def apply(self, command: pb.Command) -> bytes:
        self.index += 1
        return self.machine.apply(self.index, command.SerializeToString())

    def send(self, *items: pb.SendItem, time_ms: int = T0) -> pb.SendBatchResult:
        raw = self.apply(pb.Command(time_ms=time_ms, send=pb.SendBatch(items=list(items))))
        return pb.SendBatchResult.FromString(raw)

    def meta(self, op: pb.MetaOp, time_ms: int = T0) -> pb.MetaResult:
        return pb.MetaResult.FromString(self.apply(pb.Command(time_ms=time_ms, meta=op)))

    def channel(self, cid: str, ctype: int = GROUP, **kw: Any) -> pb.MetaResult:
        return self.meta(
            pb.MetaOp(channel=pb.ChannelUpdate(channel_id=cid, channel_type=ctype, **kw))
        )

    def group(self, cid: str, subs: list[str], **flags: Any) -> None:
        assert self.channel(cid, add_subscribers=subs, **flags).reason == ReasonCode.SUCCESS


def item(
    channel_id: str = "g1",
    *,
    ctype: int = GROUP,
    from_uid: str = "u1",
    no: str = "",
    payload: bytes = b"hi",
    **kw: Any,
) -> pb.SendItem:
    return pb.SendItem(
        from_uid=from_uid,
        channel_id=channel_id,
        channel_type=ctype,
        client_msg_no=no,
        payload=payload,
        **kw,
    )


def open_machine(path: Path, group: int = 1) -> GroupMachine:
    return GroupMachine(group, Store(path))


def close(store: Store) -> None:
    if hasattr(store, "_db"):
        store.close()


@pytest.fixture
def f(tmp_path: Path) -> Iterator[Feeder]:
    machine = open_machine(tmp_path / "db")
    try:
        yield Feeder(machine)
    finally:
        close(machine.store)


def raw_dump(store: Store) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every key and value of every column family: byte-for-byte state comparison."""
    return {name: [(bytes(k), bytes(v)) for k, v in cf.items()] for name, cf in store._cf.items()}


def logical_dump(store: Store, channels: list[tuple[int, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "applied": store.applied_index(),
        "last_id": store.last_message_id(),
    }
    for ctype, cid in channels:
        msgs = store.messages(ctype, cid, 0, 0, 1_000_000)
        out[f"{ctype}:{cid}"] = {
            "head": store.head_seq(ctype, cid),
            "messages": msgs,
            "dedupe": {
                (m.from_uid, m.client_msg_no): store.get_dedupe(
                    ctype, cid, m.from_uid, m.client_msg_no
                )
                for m in msgs
                if m.client_msg_no
            },
            "channel": store.get_channel(ctype, cid),
            "subscribers": sorted(store.subscribers(ctype, cid)),
        }
    return out


def seqs(store: Store, cid: str, ctype: int = GROUP) -> list[int]:
    return [m.message_seq for m in store.messages(ctype, cid, 0, 0, 100_000)]


# --- sequences ----------------------------------------------------------------------------------


def test_seqs_are_contiguous_and_one_based_per_channel_across_commands(f: Feeder) -> None:
    f.group("g1", ["u1", "u2"])
    f.group("g2", ["u1"])
    person = "u2@u1"
    got: dict[tuple[int, str], list[int]] = {}
    for round_ in range(5):
        items = [
            item("g1", no=f"a{round_}"),
            item("g2", no=f"b{round_}"),
            item("g1", from_uid="u2", no=f"c{round_}"),
            item(person, ctype=PERSON, no=f"d{round_}"),
        ]
        result = f.send(*items)
        assert [o.reason for o in result.outcomes] == [ReasonCode.SUCCESS] * 4
        for it, o in zip(items, result.outcomes, strict=True):
            got.setdefault((it.channel_type, it.channel_id), []).append(o.message_seq)
    assert got == {
        (GROUP, "g1"): list(range(1, 11)),
        (GROUP, "g2"): [1, 2, 3, 4, 5],
        (PERSON, person): [1, 2, 3, 4, 5],
    }
    assert seqs(f.store, "g1") == list(range(1, 11))
    assert f.store.head_seq(GROUP, "g1") == 10
    assert f.store.head_seq(GROUP, "g2") == 5
    assert f.store.head_seq(PERSON, person) == 5
    assert f.store.head_seq(GROUP, "never") == 0


def test_a_batch_answers_one_outcome_per_item_in_order(f: Feeder) -> None:
    f.group("g1", ["u1"])
    result = f.send(*[item(no=f"n{i}", payload=f"p{i}".encode()) for i in range(50)])
    assert [o.message_seq for o in result.outcomes] == list(range(1, 51))
    stored = f.store.messages(GROUP, "g1", 0, 0, 100)
    assert [m.payload for m in stored] == [f"p{i}".encode() for i in range(50)]
    assert [(o.message_id, o.message_seq) for o in result.outcomes] == [
        (m.message_id, m.message_seq) for m in stored
    ]


def test_an_id_that_does_not_increase_stops_the_apply_before_it_writes(
    f: Feeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    f.group("g1", ["u1"])
    f.send(item(no="a"))
    applied = f.store.applied_index()
    monkeypatch.setattr(machine_module, "next_message_id", lambda last, _t, _g: last)
    with pytest.raises(InvariantViolation, match="message ids increase"):
        f.send(item(no="b"))
    assert f.store.applied_index() == applied
    assert [m.client_msg_no for m in f.store.messages(GROUP, "g1", 0, 0, 10)] == ["a"]


def test_committed_lists_exactly_the_new_messages(f: Feeder) -> None:
    f.group("g1", ["u1"])
    f.send(item(no="old"))
    result = f.send(
        item(no="new-1", payload=b"\x00\x01", setting=0x10, expire=60, topic="t", stream_no="s"),
        item(no="old"),  # duplicate: not new
        item(from_uid="stranger", no="x"),  # refused: not new
        item(no="np", flags=HeaderFlag.NO_PERSIST),  # new, transient
        item(no="new-2", flags=HeaderFlag.RED_DOT | HeaderFlag.DUP),
    )
    assert [m.client_msg_no for m in result.committed] == ["new-1", "np", "new-2"]
    first, np, second = (record_from_pb(m) for m in result.committed)
    assert first == f.store.get_message(GROUP, "g1", 2)
    assert (first.setting, first.expire, first.topic, first.stream_no) == (0x10, 60, "t", "s")
    assert first.payload == b"\x00\x01" and first.timestamp_ms == T0
    assert np.message_seq == 0 and np.flags & HeaderFlag.NO_PERSIST
    assert second == f.store.get_message(GROUP, "g1", 3)
    assert second.flags == HeaderFlag.RED_DOT  # DUP is a property of the packet, not the message


# --- dedupe -------------------------------------------------------------------------------------


def test_retry_in_a_later_command_returns_the_original_ids(f: Feeder) -> None:
    f.group("g1", ["u1"])
    first = f.send(item(no="c-1", payload=b"original")).outcomes[0]
    result = f.send(item(no="c-1", payload=b"retransmitted"), item(no="c-2"))
    retry, other = result.outcomes
    assert first.reason == ReasonCode.SUCCESS and not first.duplicate
    assert retry.reason == ReasonCode.SUCCESS and retry.duplicate
    assert (retry.message_id, retry.message_seq) == (first.message_id, first.message_seq)
    assert other.message_seq == first.message_seq + 1 and not other.duplicate
    assert [m.client_msg_no for m in result.committed] == ["c-2"]
    assert [m.payload for m in f.store.messages(GROUP, "g1", 0, 0, 10)] == [b"original", b"hi"]


def test_identical_client_msg_nos_in_one_batch_get_one_seq(f: Feeder) -> None:
    f.group("g1", ["u1"])
    result = f.send(item(no="same"), item(no="same", payload=b"again"), item(no="other"))
    a, b, c = result.outcomes
    assert not a.duplicate and b.duplicate and not c.duplicate
    assert (b.message_id, b.message_seq) == (a.message_id, 1)
    assert c.message_seq == 2
    assert [m.client_msg_no for m in result.committed] == ["same", "other"]
    assert [m.payload for m in f.store.messages(GROUP, "g1", 0, 0, 10)] == [b"hi", b"hi"]
    assert f.store.head_seq(GROUP, "g1") == 2


def test_same_client_msg_no_from_different_senders_or_channels_is_not_a_duplicate(
    f: Feeder,
) -> None:
    f.group("g1", ["u1", "u2", "u3"])
    f.group("g2", ["u1"])
    in_batch = f.send(item(from_uid="u1", no="x"), item(from_uid="u2", no="x")).outcomes
    later = f.send(item(from_uid="u3", no="x"), item("g2", from_uid="u1", no="x")).outcomes
    outs = [*in_batch, *later]
    assert [o.message_seq for o in outs] == [1, 2, 3, 1]
    assert not any(o.duplicate for o in outs)
    assert len({o.message_id for o in outs}) == 4
    assert f.store.get_dedupe(GROUP, "g1", "u2", "x") == (outs[1].message_id, 2)


def test_empty_client_msg_no_is_never_deduplicated(f: Feeder) -> None:
    f.group("g1", ["u1"])
    result = f.send(item(no=""), item(no=""))
    assert [o.message_seq for o in result.outcomes] == [1, 2]
    assert not any(o.duplicate for o in result.outcomes)
    assert f.send(item(no="")).outcomes[0].message_seq == 3


# --- permissions --------------------------------------------------------------------------------


def test_group_permissions(f: Feeder) -> None:
    f.group("open", ["u1"])
    f.group("banned", ["u1"], ban=True)
    f.group("gone", ["u1"], disband=True)
    cases = [
        (item("open", from_uid="u9"), ReasonCode.SUBSCRIBER_NOT_EXIST),
        (item("open", from_uid="u1"), ReasonCode.SUCCESS),
        (item("banned", from_uid="u1"), ReasonCode.BAN),
        (item("banned", from_uid="u1", trusted=True), ReasonCode.BAN),
        (item("gone", from_uid="u1"), ReasonCode.DISBAND),
        (item("gone", from_uid="u1", trusted=True), ReasonCode.DISBAND),
        (item("missing", from_uid="u1", trusted=True), ReasonCode.CHANNEL_NOT_EXIST),
        (item("missing", from_uid="u1"), ReasonCode.SUBSCRIBER_NOT_EXIST),
        (item("open", from_uid="u9", trusted=True), ReasonCode.SUCCESS),
        (item("banned", from_uid=SYSTEM_UID), ReasonCode.SUCCESS),
        (item("x", ctype=ChannelType.CUSTOMER_SERVICE), ReasonCode.SUCCESS),
        (item("x", ctype=ChannelType.DATA, trusted=True), ReasonCode.SUCCESS),
        (item("x", ctype=13), ReasonCode.NOT_SUPPORT_CHANNEL_TYPE),
        (item("u2@u1", ctype=PERSON, from_uid="u1"), ReasonCode.SUCCESS),
    ]
    # once as one batch, and once item by item: the answer must not depend on batching
    batched = f.send(*[it for it, _ in cases]).outcomes
    single = [f.send(it).outcomes[0] for it, _ in cases]
    want = [reason for _, reason in cases]
    assert [o.reason for o in batched] == want
    assert [o.reason for o in single] == want
    for o in [*batched, *single]:
        if o.reason != ReasonCode.SUCCESS:
            assert (o.message_id, o.message_seq, o.duplicate) == (0, 0, False)
    # refused sends are not stored and take no seq
    assert f.store.head_seq(GROUP, "gone") == 0
    assert f.store.head_seq(GROUP, "missing") == 0
    assert f.store.get_channel(GROUP, "missing") is None
    assert seqs(f.store, "open") == [1, 2, 3, 4]
    assert seqs(f.store, "banned") == [1, 2]


def test_refused_send_in_a_batch_does_not_take_a_seq(f: Feeder) -> None:
    f.group("g1", ["u1"])
    a, b, c = f.send(item(no="a"), item(from_uid="stranger", no="b"), item(no="c")).outcomes
    assert b.reason == ReasonCode.SUBSCRIBER_NOT_EXIST
    assert (a.message_seq, c.message_seq) == (1, 2)


def test_over_long_client_msg_no_is_refused_without_taking_a_seq(f: Feeder) -> None:
    f.group("g1", ["u1"])
    longest = "x" * MAX_CLIENT_MSG_NO_BYTES
    result = f.send(item(no="ok-1"), item(no=longest + "x"), item(no=longest), item(no="ok-2"))
    reasons = [o.reason for o in result.outcomes]
    assert reasons == [
        ReasonCode.SUCCESS,
        ReasonCode.PAYLOAD_DECODE_ERROR,
        ReasonCode.SUCCESS,
        ReasonCode.SUCCESS,
    ]
    assert [o.message_seq for o in result.outcomes] == [1, 0, 2, 3]
    assert f.store.get_dedupe(GROUP, "g1", "u1", longest + "x") is None
    # the machine goes on serving
    assert f.send(item(no="ok-3")).outcomes[0].message_seq == 4


def test_subscriber_changes_take_effect_for_later_commands(f: Feeder) -> None:
    f.group("g1", ["u1"])
    assert f.send(item(from_uid="u2", no="1")).outcomes[0].reason == (
        ReasonCode.SUBSCRIBER_NOT_EXIST
    )
    f.channel("g1", add_subscribers=["u2"])
    after = f.send(item(from_uid="u2", no="1")).outcomes[0]
    assert after.reason == ReasonCode.SUCCESS and not after.duplicate and after.message_seq == 1
    f.channel("g1", remove_subscribers=["u2"])
    assert f.send(item(from_uid="u2", no="2")).outcomes[0].reason == (
        ReasonCode.SUBSCRIBER_NOT_EXIST
    )


# --- transient messages -------------------------------------------------------------------------


def test_no_persist_takes_seq_zero_is_not_stored_and_is_committed(f: Feeder) -> None:
    f.group("g1", ["u1"])
    result = f.send(
        item(no="np", flags=HeaderFlag.NO_PERSIST, origin_conn=7),
        item(no="np", flags=HeaderFlag.NO_PERSIST),  # no dedupe for transient messages
        item(no="after"),
    )
    np1, np2, normal = result.outcomes
    assert np1.reason == np2.reason == ReasonCode.SUCCESS
    assert np1.message_seq == np2.message_seq == 0
    assert np1.message_id and np2.message_id and np1.message_id != np2.message_id
    assert not np2.duplicate
    assert normal.message_seq == 1  # the transient messages took no seq
    assert [m.client_msg_no for m in result.committed] == ["np", "np", "after"]
    assert f.store.get_message(GROUP, "g1", 0) is None
    assert [m.client_msg_no for m in f.store.messages(GROUP, "g1", 0, 0, 10)] == ["after"]
    assert f.store.get_dedupe(GROUP, "g1", "u1", "np") is None


def test_a_batch_of_only_no_persist_messages(f: Feeder) -> None:
    f.group("g1", ["u1"])
    result = f.send(*[item(no=f"n{i}", flags=HeaderFlag.NO_PERSIST) for i in range(3)])
    assert all(o.reason == ReasonCode.SUCCESS and o.message_seq == 0 for o in result.outcomes)
    assert len(result.committed) == 3
    assert f.store.head_seq(GROUP, "g1") == 0


# --- message ids --------------------------------------------------------------------------------


def test_message_ids_increase_across_commands_even_when_the_clock_goes_back(f: Feeder) -> None:
    f.group("g1", ["u1"])
    ids: list[int] = []
    # the leader's clock (and leaders) change: a later command may carry an earlier time
    for i, t in enumerate([T0, T0, T0 - 5_000, T0 + 3, T0 + 3, T0 - 1, T0 + 100]):
        result = f.send(
            item(no=f"a{i}"),
            item("u2@u1", ctype=PERSON, no=f"b{i}"),
            item(no=f"np{i}", flags=HeaderFlag.NO_PERSIST),
            time_ms=t,
        )
        ids.extend(o.message_id for o in result.outcomes)
        assert all(m.timestamp_ms == t for m in result.committed)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all((mid >> 12) & 0x3FF == 1 for mid in ids)
    assert f.store.last_message_id() == ids[-1]
    # a meta command or a noop does not move the id sequence backwards
    f.channel("g1", add_subscribers=["u3"])
    f.apply(pb.Command(time_ms=T0 - 10_000, noop=pb.Noop()))
    assert f.store.last_message_id() == ids[-1]
    assert f.send(item(no="z"), time_ms=T0 - 10_000).outcomes[0].message_id > ids[-1]


def test_message_ids_carry_the_group_id(tmp_path: Path) -> None:
    machine = open_machine(tmp_path / "db", group=37)
    try:
        feed = Feeder(machine)
        out = feed.send(item("a@b", ctype=PERSON, from_uid="a", no="1")).outcomes[0]
        assert (out.message_id >> 12) & 0x3FF == 37
        assert out.message_id >> SHIFT == T0 - EPOCH_MS
    finally:
        close(machine.store)


@settings(max_examples=200, deadline=None)
@given(
    group=st.integers(0, 1023),
    start=st.integers(0, 1 << 30),
    times=st.lists(st.integers(EPOCH_MS - 10_000, EPOCH_MS + (1 << 32)), min_size=1, max_size=60),
)
def test_next_message_id_increases_for_any_clock(group: int, start: int, times: list[int]) -> None:
    last = start << SHIFT | group << 12
    for t in times:
        nxt = next_message_id(last, t, group)
        assert nxt > last
        assert (nxt >> 12) & 0x3FF == group
        # never earlier than the clock says (when the clock is not behind)
        assert nxt >> SHIFT >= max(t - EPOCH_MS, last >> SHIFT)
        last = nxt


@settings(max_examples=20, deadline=None)
@given(group=st.integers(0, 1023), n=st.integers(4097, 12_000))
def test_next_message_id_more_than_4096_in_one_millisecond(group: int, n: int) -> None:
    t = T0
    last = 0
    ids = []
    for _ in range(n):
        last = next_message_id(last, t, group)
        ids.append(last)
    assert all(b > a for a, b in itertools.pairwise(ids))
    assert all((i >> 12) & 0x3FF == group for i in ids)
    assert ids[0] >> SHIFT == t - EPOCH_MS
    # borrowed milliseconds: exactly as many as the 4096-id pages used
    assert (ids[-1] >> SHIFT) - (ids[0] >> SHIFT) == (n - 1) // 4096
    # and the clock catching up does not reuse an id
    assert next_message_id(ids[-1], t + 1, group) > ids[-1]


# --- determinism and replay ---------------------------------------------------------------------


def sample_commands() -> list[pb.Command]:
    """A mixed command sequence: metadata, sends with refusals, duplicates and transients."""

    def send(t: int, *items: pb.SendItem) -> pb.Command:
        return pb.Command(time_ms=t, send=pb.SendBatch(items=list(items)))

    def chan(**kw: Any) -> pb.Command:
        return pb.Command(time_ms=T0, meta=pb.MetaOp(channel=pb.ChannelUpdate(**kw)))

    cmds = [
        chan(channel_id="g1", channel_type=GROUP, add_subscribers=["u1", "u2"]),
        chan(channel_id="g2", channel_type=GROUP, add_subscribers=["u1"]),
        pb.Command(
            time_ms=T0,
            meta=pb.MetaOp(set_device=pb.DeviceToken(uid="u1", device_flag=1, token="tk")),
        ),
    ]
    for i in range(12):
        cmds.append(
            send(
                T0 + (i * 7) % 5 - 2,  # jittery clock
                item("g1", no=f"a{i}"),
                item("g1", from_uid="u2", no=f"a{i}"),
                item("g2", no=f"a{i // 2}"),  # a duplicate every other command
                item("g1", from_uid="nobody", no=f"z{i}"),
                item("u2@u1", ctype=PERSON, no=f"p{i}", flags=HeaderFlag.NO_PERSIST * (i % 2)),
                item("g1", no=f"a{i}"),  # duplicate within the batch
            )
        )
        if i == 3:
            history = [
                pb.Message(from_uid="u1", client_msg_no="p2", timestamp_ms=T0 - 9, payload=b"h"),
                pb.Message(from_uid="u2", client_msg_no="i1", timestamp_ms=T0 - 8, flags=2),
            ]
            op = pb.MessageImport(channel_id="u2@u1", channel_type=PERSON, messages=history)
            cmds.append(pb.Command(time_ms=T0 + 1, meta=pb.MetaOp(message_import=op)))
        if i == 5:
            cmds.append(chan(channel_id="g2", channel_type=GROUP, ban=True))
        if i == 8:
            cmds.append(pb.Command(time_ms=T0, noop=pb.Noop()))
            cmds.append(chan(channel_id="g2", channel_type=GROUP, ban=False))
    return cmds


CHANNELS = [(GROUP, "g1"), (GROUP, "g2"), (PERSON, "u2@u1")]


def test_two_replicas_fed_the_same_commands_end_identical(tmp_path: Path) -> None:
    a, b = open_machine(tmp_path / "a"), open_machine(tmp_path / "b")
    try:
        raw = [c.SerializeToString() for c in sample_commands()]
        results_a = [a.apply(i, c) for i, c in enumerate(raw, start=1)]
        results_b = [b.apply(i, c) for i, c in enumerate(raw, start=1)]
        assert results_a == results_b
        assert logical_dump(a.store, CHANNELS) == logical_dump(b.store, CHANNELS)
        assert raw_dump(a.store) == raw_dump(b.store)
        assert a.applied_index() == b.applied_index() == len(raw)
        assert seqs(a.store, "g1") == list(range(1, 25))
    finally:
        close(a.store)
        close(b.store)


@settings(max_examples=15, deadline=None)
@given(
    plan=st.lists(
        st.tuples(
            st.integers(-3, 3),  # clock jitter
            st.lists(
                st.tuples(
                    st.sampled_from(["g1", "g2", "u2@u1"]),
                    st.sampled_from(["u1", "u2", "u3"]),
                    st.sampled_from(["", "a", "b", "c"]),
                    st.booleans(),  # no persist
                ),
                min_size=1,
                max_size=6,
            ),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_determinism_for_any_command_sequence(plan: list[Any]) -> None:
    cmds = [
        pb.Command(
            time_ms=T0,
            meta=pb.MetaOp(
                channel=pb.ChannelUpdate(
                    channel_id="g1", channel_type=GROUP, add_subscribers=["u1", "u2"]
                )
            ),
        )
    ]
    for jitter, items in plan:
        cmds.append(
            pb.Command(
                time_ms=T0 + jitter,
                send=pb.SendBatch(
                    items=[
                        item(
                            cid,
                            ctype=PERSON if "@" in cid else GROUP,
                            from_uid=uid,
                            no=no,
                            flags=HeaderFlag.NO_PERSIST if np else 0,
                        )
                        for cid, uid, no, np in items
                    ]
                ),
            )
        )
    raw = [c.SerializeToString() for c in cmds]
    with tempfile.TemporaryDirectory() as d:
        a, b = open_machine(Path(d) / "a"), open_machine(Path(d) / "b")
        try:
            ra = [a.apply(i, c) for i, c in enumerate(raw, start=1)]
            rb = [b.apply(i, c) for i, c in enumerate(raw, start=1)]
            assert ra == rb
            assert raw_dump(a.store) == raw_dump(b.store)
            for ctype, cid in CHANNELS:
                got = seqs(a.store, cid, ctype)
                assert got == list(range(1, len(got) + 1))
        finally:
            close(a.store)
            close(b.store)


def test_replayed_indexes_are_no_ops(f: Feeder) -> None:
    f.group("g1", ["u1"])
    sent = [f.send(item(no=f"n{i}")) for i in range(4)]
    before = raw_dump(f.store)
    applied = f.machine.applied_commands
    assert f.machine.applied_index() == 5
    # what a journal replay after a restart hands the machine again: indexes 1..5
    for index in range(0, 6):
        cmd = pb.Command(time_ms=T0 + 99, send=pb.SendBatch(items=[item(no=f"new{index}")]))
        assert f.machine.apply(index, cmd.SerializeToString()) == b""
    assert raw_dump(f.store) == before
    assert f.machine.applied_commands == applied
    # the next real index still applies, continuing the seqs
    nxt = f.send(item(no="n9")).outcomes[0]
    assert nxt.message_seq == 5
    assert nxt.message_id > sent[-1].outcomes[0].message_id


def test_replay_after_reopening_the_store_ends_in_the_same_state(tmp_path: Path) -> None:
    """A replica that restarted half way and is then handed the whole journal again ends
    byte-for-byte like one that applied everything once."""
    raw = [c.SerializeToString() for c in sample_commands()]
    ref = open_machine(tmp_path / "ref")
    half = open_machine(tmp_path / "half")
    try:
        ref_results = [ref.apply(i, c) for i, c in enumerate(raw, start=1)]
        cut = len(raw) // 2
        first = [half.apply(i, c) for i, c in enumerate(raw[:cut], start=1)]
        assert first == ref_results[:cut]
        half.store.close()
        half = open_machine(tmp_path / "half")
        assert half.applied_index() == cut
        replay = [half.apply(i, c) for i, c in enumerate(raw, start=1)]
        assert replay[:cut] == [b""] * cut
        assert replay[cut:] == ref_results[cut:]
        assert raw_dump(half.store) == raw_dump(ref.store)
    finally:
        close(ref.store)
        close(half.store)


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_installed_into_another_store_reproduces_the_state(tmp_path: Path) -> None:
    leader, follower = open_machine(tmp_path / "leader"), open_machine(tmp_path / "follower")
    try:
        raw = [c.SerializeToString() for c in sample_commands()]
        for i, c in enumerate(raw, start=1):
            leader.apply(i, c)
        # the follower has some older, different state that the snapshot replaces
        Feeder(follower).group("stale", ["x"])
        leader.checkpoint(str(tmp_path / "ckpt"))
        follower.install(str(tmp_path / "ckpt"))
        assert follower.applied_index() == leader.applied_index() == len(raw)
        assert raw_dump(follower.store) == raw_dump(leader.store)
        assert follower.store.get_channel(GROUP, "stale") is None
        # both continue identically from there
        nxt = pb.Command(time_ms=T0, send=pb.SendBatch(items=[item("g1", no="after")]))
        index = len(raw) + 1
        a = leader.apply(index, nxt.SerializeToString())
        b = follower.apply(index, nxt.SerializeToString())
        assert a == b
        assert pb.SendBatchResult.FromString(a).outcomes[0].message_seq == 25
        # and the installed store survives a reopen
        follower.store.close()
        follower = open_machine(tmp_path / "follower")
        assert follower.applied_index() == index
        assert raw_dump(follower.store) == raw_dump(leader.store)
    finally:
        close(leader.store)
        close(follower.store)


# --- metadata -----------------------------------------------------------------------------------


def test_set_device_is_read_back_by_the_device_and_auth_queries(f: Feeder) -> None:
    keys = TokenKeys(["cluster-secret"])
    sealed = keys.seal("u1", 1, "t1", 1, expires_at_ms=T0 + 60_000)
    assert f.meta(pb.MetaOp(set_device=sealed)).reason == ReasonCode.SUCCESS
    assert run_query(f.store, {"q": "device", "uid": "u1", "device_flag": 1}) == {"device_level": 1}
    assert run_query(f.store, {"q": "device", "uid": "u1", "device_flag": 0}) is None
    auth = run_query(f.store, {"q": "auth", "uid": "u1", "device_flag": 1})
    assert auth["ban"] is False
    device = auth["device"]
    # Stored as given: the hash and when it expires, never the token.
    assert device["token"] == "" and device["mac"] == sealed.token_mac.hex()
    assert device["key_id"] == keys.current.key_id and device["expires_at_ms"] == T0 + 60_000
    assert keys.check(device, "t1", T0).verdict is Verdict.OK
    assert keys.check(device, "t2", T0).verdict is Verdict.WRONG
    assert keys.check(device, "t1", T0 + 60_000).verdict is Verdict.EXPIRED
    # a new token for the same platform replaces the old one
    f.meta(pb.MetaOp(set_device=keys.seal("u1", 1, "t2", 0)))
    device = run_query(f.store, {"q": "auth", "uid": "u1", "device_flag": 1})["device"]
    assert keys.check(device, "t2", T0).verdict is Verdict.OK and device["device_level"] == 0
    assert keys.check(device, "t1", T0).verdict is Verdict.WRONG
    # a banned user: its own person channel carries the ban
    f.channel("u1", ctype=PERSON, ban=True)
    assert run_query(f.store, {"q": "auth", "uid": "u1", "device_flag": 1})["ban"] is True
    assert run_query(f.store, {"q": "auth", "uid": "nobody", "device_flag": 0}) == {
        "device": None,
        "ban": False,
    }


def test_a_rehash_replaces_only_the_record_it_was_checked_against(f: Feeder) -> None:
    """A login under the previous password's key (or of a plain token from before hashes)
    seals the token again; an app that set another token in between keeps its own."""
    old, new = TokenKeys(["old-password"]), TokenKeys(["new-password", "old-password"])

    def device() -> dict[str, Any]:
        found = run_query(f.store, {"q": "auth", "uid": "u1", "device_flag": 0})["device"]
        assert found is not None
        return dict(found)

    f.meta(pb.MetaOp(set_device=old.seal("u1", 0, "t1", 1)))
    checked = new.check(device(), "t1", T0)
    assert checked.verdict is Verdict.OK and checked.rehash
    before = device()
    f.meta(pb.MetaOp(set_device=new.rehash("u1", 0, before, "t1")))
    after = device()
    assert after["key_id"] == new.current.key_id and after["device_level"] == 1
    assert new.check(after, "t1", T0) == Checked(Verdict.OK)
    assert old.check(after, "t1", T0).verdict is Verdict.WRONG  # old key alone: unknown now
    # The app set t2 between the check and the re-hash of t1: t2 stays.
    stale = new.rehash("u1", 0, after, "t1")
    f.meta(pb.MetaOp(set_device=new.seal("u1", 0, "t2", 0)))
    f.meta(pb.MetaOp(set_device=stale))
    assert new.check(device(), "t2", T0).verdict is Verdict.OK
    # A plain-text record from before hashes: checked as it is, then sealed.
    f.meta(pb.MetaOp(set_device=pb.DeviceToken(uid="u1", device_flag=0, token="legacy")))
    plain = device()
    assert plain["token"] == "legacy" and not plain["mac"]
    checked = new.check(plain, "legacy", T0)
    assert checked.verdict is Verdict.OK and checked.rehash
    assert new.check(plain, "legac", T0).verdict is Verdict.WRONG
    f.meta(pb.MetaOp(set_device=new.rehash("u1", 0, plain, "legacy")))
    assert device()["token"] == "" and new.check(device(), "legacy", T0) == Checked(Verdict.OK)


def test_channel_update_flags_subscribers_and_must_exist(f: Feeder) -> None:
    def info() -> dict[str, Any]:
        got = run_query(f.store, {"q": "channel", "channel_type": GROUP, "channel_id": "g1"})
        assert got is not None
        return dict(got)

    def subs() -> list[str]:
        q = {"q": "subscribers", "channel_type": GROUP, "channel_id": "g1"}
        return sorted(run_query(f.store, q))

    missing = f.channel("g1", must_exist=True, add_subscribers=["u1"])
    assert missing.reason == ReasonCode.CHANNEL_NOT_EXIST
    assert f.store.get_channel(GROUP, "g1") is None and subs() == []

    assert f.channel("g1", add_subscribers=["u1", "u2", "u3"], large=True).reason == 1
    assert info()["large"] is True and info()["ban"] is False
    assert subs() == ["u1", "u2", "u3"]

    # absent flags keep their value; present ones (even False) overwrite it
    f.channel("g1", ban=True, must_exist=True)
    assert (info()["ban"], info()["large"]) == (True, True)
    f.channel("g1", large=False, send_ban=True, allow_stranger=True, disband=True)
    assert info() | {"extra": {}} == {
        "channel_id": "g1",
        "channel_type": GROUP,
        "ban": True,
        "disband": True,
        "send_ban": True,
        "allow_stranger": True,
        "large": False,
        "extra": {},
    }

    f.channel("g1", remove_subscribers=["u2", "nobody"])
    assert subs() == ["u1", "u3"]
    f.channel("g1", reset_subscribers=True, add_subscribers=["u3", "u4"])
    assert subs() == ["u3", "u4"]
    f.channel("g1", reset_subscribers=True)
    assert subs() == []
    # metadata commands take no message seq and move no ids
    assert f.store.head_seq(GROUP, "g1") == 0 and f.store.last_message_id() == 0


def test_unknown_meta_op_and_noop(f: Feeder) -> None:
    before = f.store.applied_index()
    result = f.meta(pb.MetaOp())
    assert result.reason == ReasonCode.SYSTEM_ERROR
    assert f.apply(pb.Command(time_ms=T0, noop=pb.Noop())) == b""
    # both still advance the applied index, so a replay skips them
    assert f.store.applied_index() == before + 2


# --- reads --------------------------------------------------------------------------------------


def page(store: Store, **q: Any) -> tuple[list[int], int, int]:
    got = run_query(store, {"q": "messages", "channel_type": GROUP, "channel_id": "g1", **q})
    return [m["message_seq"] for m in got["messages"]], got["more"], got["head"]


def test_messages_query_paging(f: Feeder) -> None:
    f.group("g1", ["u1"])
    assert page(f.store) == ([], 0, 0)
    f.send(*[item(no=f"n{i}", payload=bytes([i])) for i in range(10)])
    s = f.store
    # both seqs 0: the newest `limit`
    assert page(s, limit=3) == ([8, 9, 10], 1, 10)
    assert page(s, limit=10) == (list(range(1, 11)), 0, 10)
    assert page(s, limit=100) == (list(range(1, 11)), 0, 10)
    assert page(s, limit=3, pull_mode=1) == ([8, 9, 10], 1, 10)
    # pull_mode 1: up from start (included), end excluded
    assert page(s, pull_mode=1, start_message_seq=3, end_message_seq=6) == ([3, 4, 5], 0, 10)
    assert page(s, pull_mode=1, start_message_seq=3, limit=4) == ([3, 4, 5, 6], 1, 10)
    assert page(s, pull_mode=1, start_message_seq=7, limit=4) == ([7, 8, 9, 10], 0, 10)
    assert page(s, pull_mode=1, start_message_seq=3, end_message_seq=6, limit=3) == (
        [3, 4, 5],
        0,
        10,
    )
    assert page(s, pull_mode=1, start_message_seq=3, end_message_seq=7, limit=3) == (
        [3, 4, 5],
        1,
        10,
    )
    assert page(s, pull_mode=1, start_message_seq=11) == ([], 0, 10)
    # pull_mode 0: down from start (included), towards end (excluded)
    assert page(s, pull_mode=0, start_message_seq=8, limit=3) == ([6, 7, 8], 1, 10)
    assert page(s, pull_mode=0, start_message_seq=3, limit=5) == ([1, 2, 3], 0, 10)
    assert page(s, pull_mode=0, start_message_seq=8, end_message_seq=4) == ([5, 6, 7, 8], 0, 10)
    assert page(s, pull_mode=0, start_message_seq=8, end_message_seq=4, limit=2) == (
        [7, 8],
        1,
        10,
    )
    assert page(s, pull_mode=0, start_message_seq=0, end_message_seq=7) == ([8, 9, 10], 0, 10)
    # limits are clamped to at least one
    assert page(s, limit=0) == ([10], 1, 10)
    got = run_query(s, {"q": "messages", "channel_type": GROUP, "channel_id": "g1", "limit": 1})
    msg = got["messages"][0]
    assert (msg["client_msg_no"], msg["payload"], msg["from_uid"]) == ("n9", "CQ==", "u1")


def test_head_query_and_bad_queries(f: Feeder) -> None:
    f.group("g1", ["u1"])
    f.send(item(), item())
    assert run_query(f.store, {"q": "head", "channel_type": GROUP, "channel_id": "g1"}) == 2
    assert run_query(f.store, {"q": "channel", "channel_type": GROUP, "channel_id": "x"}) is None
    for bad in (
        {"q": "nope"},
        {},
        {"q": "head", "channel_id": "g1"},
        {"q": "messages", "channel_type": "x", "channel_id": "g1"},
        {"q": "device", "uid": "u1"},
    ):
        with pytest.raises(QueryError):
            run_query(f.store, bad)


def test_a_failing_metadata_op_answers_system_error_and_writes_nothing(
    f: Feeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a domain module must not wedge the group: the entry counts as applied, its
    partial writes are dropped, and the next command applies normally."""
    from node.groups import machine as machine_module

    def broken(ctx: Any, op: Any) -> pb.MetaResult:
        ctx.wb.put_raw("msgx", b"half-done", b"x")
        raise KeyError("a bug")

    monkeypatch.setitem(machine_module._META_HANDLERS, "stream_event", broken)
    before = f.machine.applied_index()
    result = f.meta(pb.MetaOp(stream_event=pb.StreamEvent(channel_id="g", channel_type=GROUP)))
    assert result.reason == ReasonCode.SYSTEM_ERROR and "KeyError" in result.detail
    assert f.machine.applied_index() == before + 1
    assert f.store.get_raw("msgx", b"half-done") is None
    assert f.channel("after-the-bug").reason == ReasonCode.SUCCESS


@pytest.mark.parametrize(
    ("channel_id", "from_uid"),
    [("", "u1"), ("u2", "u1"), ("@u2", "u1"), ("u1@", "u1"), ("u2@u3", "u1"), ("a b@u1", "u1")],
)
def test_a_person_send_whose_channel_id_is_no_person_channel_is_refused_in_apply(
    f: Feeder, channel_id: str, from_uid: str
) -> None:
    # Entry nodes never propose these; a peer that did (a bug, or a forged ForwardSends)
    # once committed a message that delivery could not handle. Apply refuses it, and the
    # batch's other sends are unaffected.
    res = f.send(
        item(channel_id, ctype=PERSON, from_uid=from_uid, no="bad"),
        item("u1@u2", ctype=PERSON, from_uid="u1", no="good"),
    )
    assert [o.reason for o in res.outcomes] == [ReasonCode.CHANNEL_ID_ERROR, ReasonCode.SUCCESS]
    assert [m.channel_id for m in res.committed] == ["u1@u2"]


def test_the_api_system_sender_may_write_into_a_person_channel(f: Feeder) -> None:
    # A revoke notice is stored in the person channel by the API's own sender.
    res = f.send(item("u1@u2", ctype=PERSON, from_uid=SYSTEM_UID, no="notice"))
    assert [o.reason for o in res.outcomes] == [ReasonCode.SUCCESS]
