"""History import applied by a real ``GroupMachine`` on a real RocksDB (no Raft): seqs in
order after the head, the given senders and times, dedupe, nothing counted as unread, and a
batch applied whole or not at all (``groups/imports.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.channels import person_channel_id
from node.groups import msgx
from node.groups.machine import GroupMachine
from node.groups.reads import run_query
from node.ids import committed_ms
from node.storage import Store
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, HeaderFlag, ReasonCode
from tests.unit.test_node_machine import T0, Feeder, item

GROUP, PERSON = int(ChannelType.GROUP), int(ChannelType.PERSON)
RED = int(HeaderFlag.RED_DOT)
OLD = T0 - 86_400_000  # history from the day before the leader's clock
DM = person_channel_id("ann", "bo")


@pytest.fixture
def f(tmp_path: Path) -> Iterator[Feeder]:
    store = Store(tmp_path / "db")
    feeder = Feeder(GroupMachine(5, store))
    feeder.group("g1", ["u1", "u2", "u3"])
    yield feeder
    store.close()


def msg(from_uid: str, no: str, at_ms: int, payload: Any = None, **kw: Any) -> pb.Message:
    raw = json.dumps(payload or {"type": 1, "content": no}).encode()
    return pb.Message(
        from_uid=from_uid, client_msg_no=no, timestamp_ms=at_ms, payload=raw, flags=RED, **kw
    )


def do_import(
    f: Feeder, messages: list[pb.Message], cid: str = "g1", ctype: int = GROUP, t: int = T0
) -> pb.MetaResult:
    op = pb.MessageImport(channel_id=cid, channel_type=ctype, messages=messages)
    return f.meta(pb.MetaOp(message_import=op), time_ms=t)


def imported(result: pb.MetaResult) -> list[dict[str, int]]:
    assert result.reason == ReasonCode.SUCCESS, result.detail
    out: list[dict[str, int]] = json.loads(result.data)["messages"]
    return out


def row(f: Feeder, uid: str, cid: str = "g1", ctype: int = GROUP) -> Any:
    q = {"q": "conversation_row", "uid": uid, "channel_id": cid, "channel_type": ctype}
    return run_query(f.store, q)


def convs(f: Feeder, uid: str, **kw: Any) -> list[dict[str, Any]]:
    return list(run_query(f.store, {"q": "conversations", "uid": uid, **kw}))


def test_import_keeps_sender_and_time_and_appends_in_order(f: Feeder) -> None:
    live = f.send(item("g1", trusted=True, no="live")).outcomes[0]
    # Senders that are not (or no longer) members: history does not ask.
    batch = [msg("gone", "h1", OLD), msg("u2", "h2", OLD + 5), msg("gone", "h3", OLD + 9)]
    out = imported(do_import(f, batch))
    assert [m["message_seq"] for m in out] == [2, 3, 4]
    ids = [m["message_id"] for m in out]
    assert ids == sorted(ids) and ids[0] > live.message_id  # the group's id order holds
    assert all(committed_ms(i) == T0 for i in ids)  # the id tells when it was imported
    stored = f.store.messages(GROUP, "g1", 2, 0, 10)
    assert [(r.from_uid, r.client_msg_no, r.timestamp_ms) for r in stored] == [
        ("gone", "h1", OLD),
        ("u2", "h2", OLD + 5),
        ("gone", "h3", OLD + 9),
    ]
    assert f.store.head_seq(GROUP, "g1") == 4
    nxt = f.send(item("g1", trusted=True, no="after")).outcomes[0]
    assert nxt.message_seq == 5 and nxt.message_id > ids[-1]


def test_import_changes_no_unread_and_no_read_floor(f: Feeder) -> None:
    f.send(item("g1", trusted=True, no="x", flags=RED))  # u2 and u3 have 1 unread
    op = pb.ConversationOp(uid="u3", channel_id="g1", channel_type=GROUP, unread=7)
    op.kind = pb.ConversationOp.SET_UNREAD
    f.meta(pb.MetaOp(conversation=op))
    before = {u: row(f, u) for u in ("u1", "u2", "u3")}
    mention = {"type": 1, "content": "@u2", "mention": {"uids": ["u2"], "all": 1}}
    imported(do_import(f, [msg("u1", "h1", OLD, mention), msg("u2", "h2", OLD)]))
    after = {u: row(f, u) for u in ("u1", "u2", "u3")}
    for uid in before:
        assert after[uid]["unread"] == before[uid]["unread"], uid
        assert after[uid]["read"] == before[uid]["read"], uid  # the senders' too
        assert after[uid]["mention"] == 0, uid  # imported mentions mark no one
    assert (after["u2"]["unread"], after["u3"]["unread"]) == (1, 7)
    assert after["u2"]["top"] == 3
    # Live messages after the import count as before.
    f.send(item("g1", trusted=True, no="y", flags=RED))
    assert row(f, "u2")["unread"] == 2


def test_person_history_makes_both_conversations(f: Feeder) -> None:
    batch = [msg("ann", "d1", OLD), msg("bo", "d2", OLD + 60_000)]
    out = imported(do_import(f, batch, cid=DM, ctype=PERSON))
    assert [m["message_seq"] for m in out] == [1, 2]
    for uid in ("ann", "bo"):
        [conv] = convs(f, uid)
        assert (conv["last_msg_seq"], conv["unread"], conv["mention"]) == (2, 0, 0)
        assert conv["timestamp_ms"] == OLD + 60_000  # the original time is shown
        assert conv["version"] == T0  # ...but the row changed at the import
        assert [m["from_uid"] for m in conv["recents"]] == ["ann", "bo"]
    # A client that synced before the import sees the row again.
    assert [c["channel_id"] for c in convs(f, "bo", version=T0 - 1)] == [DM]


def test_reimport_and_repeats_store_nothing_new(f: Feeder) -> None:
    sent = f.send(item("g1", trusted=True, no="s1", from_uid="u1")).outcomes[0]
    batch = [msg("u1", "h1", OLD), msg("u1", "h1", OLD), msg("u1", "s1", OLD)]
    first = imported(do_import(f, batch))
    assert first[0] == {"message_id": first[0]["message_id"], "message_seq": 2, "duplicate": 0}
    assert first[1] == {**first[0], "duplicate": 1}  # a repeat within the batch
    assert first[2] == {"message_id": sent.message_id, "message_seq": 1, "duplicate": 1}
    again = imported(do_import(f, batch, t=T0 + 1000))
    assert [(m["message_id"], m["message_seq"]) for m in again] == [
        (m["message_id"], m["message_seq"]) for m in first
    ]
    assert all(m["duplicate"] for m in again)
    assert f.store.head_seq(GROUP, "g1") == 2
    # The same client_msg_no from another sender is another message.
    assert imported(do_import(f, [msg("u2", "h1", OLD)]))[0]["message_seq"] == 3


def test_a_refused_message_refuses_the_whole_batch(f: Feeder) -> None:
    batch = [msg("ann", "d1", OLD), msg("carl", "d2", OLD)]
    result = do_import(f, batch, cid=DM, ctype=PERSON)
    assert result.reason == ReasonCode.NOT_ALLOW_SEND
    assert "messages[1].from_uid" in result.detail
    assert f.store.head_seq(PERSON, DM) == 0
    assert f.store.get_dedupe(PERSON, DM, "ann", "d1") is None
    for bad, words in (
        (msg("u1", "", OLD), "client_msg_no is required"),
        (msg("u1", "n", 0), "timestamp must be positive"),
        (msg("", "n", OLD), "from_uid is required"),
        (msg("u1", "n" * 200, OLD), "client_msg_no is longer"),
    ):
        result = do_import(f, [msg("u1", "ok", OLD), bad])
        assert result.reason == ReasonCode.PAYLOAD_DECODE_ERROR and words in result.detail
    assert f.store.head_seq(GROUP, "g1") == 0


def test_where_history_may_go(f: Feeder) -> None:
    one = [msg("u1", "h1", OLD)]
    assert do_import(f, one, cid="nope").reason == ReasonCode.CHANNEL_NOT_EXIST
    f.group("banned", ["u1"], ban=True)
    assert imported(do_import(f, one, cid="banned"))[0]["message_seq"] == 1  # said before
    f.group("dead", ["u1"], disband=True)
    assert do_import(f, one, cid="dead").reason == ReasonCode.DISBAND
    for ctype, cid in ((8, "tmpabc"), (9, "live"), (GROUP, "g1____cmd")):
        assert do_import(f, one, cid=cid, ctype=ctype).reason == (
            ReasonCode.NOT_SUPPORT_CHANNEL_TYPE
        )
    assert do_import(f, [], cid="g1").reason == ReasonCode.PAYLOAD_DECODE_ERROR
    agent = [msg("u1", "a1", OLD), msg("bot", "a2", OLD)]
    assert imported(do_import(f, agent, cid="u1@bot", ctype=11))[1]["message_seq"] == 2
    stranger = [msg("u9", "a3", OLD)]
    assert do_import(f, stranger, cid="u1@bot", ctype=11).reason == ReasonCode.NOT_ALLOW_SEND


def test_imported_expiry_counts_from_the_original_time(f: Feeder) -> None:
    imported(do_import(f, [msg("u1", "e1", OLD, expire=60)]))
    ((key, _),) = f.store.prefix_items(msgx.CF, msgx.EXPIRY)
    assert msgx.parse_expiry_key(key)[0] == OLD + 60_000
