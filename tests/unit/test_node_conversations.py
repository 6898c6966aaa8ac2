"""Conversation rows, unread counts, mentions and message lookups, applied by a real
``GroupMachine`` on a real RocksDB store (no Raft): the rules of ``groups/conversations.py``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.channels import person_channel_id
from node.groups.context import ApplyContext
from node.groups.conversations import Row, cleared_to, on_message
from node.groups.machine import GroupMachine
from node.groups.msgindex import group_of_message_id
from node.groups.reads import run_query
from node.groups.retention import plan
from node.ids import EPOCH_MS
from node.storage import MessageRecord, Store
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, HeaderFlag, ReasonCode

PERSON, GROUP = int(ChannelType.PERSON), int(ChannelType.GROUP)
RED = int(HeaderFlag.RED_DOT)
T0 = EPOCH_MS + 5_000_000
GROUP_ID = 7


class Node:
    """A slot group's machine and its next Raft index."""

    def __init__(self, store: Store) -> None:
        self.machine = GroupMachine(GROUP_ID, store)
        self.store = store
        self.index = 0
        self.time_ms = T0

    def apply(self, command: pb.Command) -> bytes:
        self.index += 1
        self.time_ms += 1000
        command.time_ms = self.time_ms
        return self.machine.apply(self.index, command.SerializeToString())

    def send(
        self, cid: str, from_uid: str, *, ctype: int = GROUP, flags: int = RED, payload: Any = None
    ) -> pb.SendOutcome:
        return self.send_many(
            [(cid, from_uid)], ctype=ctype, flags=flags, payload=payload
        ).outcomes[0]

    def send_many(
        self,
        pairs: list[tuple[str, str]],
        *,
        ctype: int = GROUP,
        flags: int = RED,
        payload: Any = None,
    ) -> pb.SendBatchResult:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload or {"c": 1}).encode()
        items = [
            pb.SendItem(
                from_uid=f, channel_id=c, channel_type=ctype, payload=raw, flags=flags, trusted=True
            )
            for c, f in pairs
        ]
        result = pb.SendBatchResult.FromString(
            self.apply(pb.Command(send=pb.SendBatch(items=items)))
        )
        assert all(o.reason == ReasonCode.SUCCESS for o in result.outcomes)
        return result

    def members(self, cid: str, add: list[str] = (), remove: list[str] = (), **kw: Any) -> None:  # type: ignore[assignment]
        op = pb.MetaOp(
            channel=pb.ChannelUpdate(
                channel_id=cid,
                channel_type=GROUP,
                add_subscribers=list(add),
                remove_subscribers=list(remove),
                **kw,
            )
        )
        assert pb.MetaResult.FromString(self.apply(pb.Command(meta=op))).reason == 1

    def conv(
        self, uid: str, cid: str, kind: int, *, ctype: int = GROUP, seq: int = 0, unread: int = 0
    ) -> dict[str, Any]:
        op = pb.ConversationOp(
            uid=uid, channel_id=cid, channel_type=ctype, kind=kind, message_seq=seq, unread=unread
        )
        result = pb.MetaResult.FromString(self.apply(pb.Command(meta=pb.MetaOp(conversation=op))))
        assert result.reason == ReasonCode.SUCCESS
        return dict(json.loads(result.data))

    def row(self, uid: str, cid: str, ctype: int = GROUP) -> Any:
        return run_query(
            self.store,
            {"q": "conversation_row", "uid": uid, "channel_id": cid, "channel_type": ctype},
        )

    def unread(self, uid: str, cid: str, ctype: int = GROUP) -> int:
        row = self.row(uid, cid, ctype)
        assert row is not None, f"{uid} has no row in {cid}"
        return int(row["unread"])

    def convs(self, uid: str, **kw: Any) -> list[dict[str, Any]]:
        return list(run_query(self.store, {"q": "conversations", "uid": uid, **kw}))


@pytest.fixture
def n(tmp_path: Path) -> Iterator[Node]:
    store = Store(tmp_path / "db")
    try:
        yield Node(store)
    finally:
        store.close()


# --- lookups ----------------------------------------------------------------------------------


def test_message_ids_are_indexed_with_their_group(n: Node) -> None:
    n.members("g", ["a", "b"])
    result = n.send_many([("g", "a"), ("g", "b"), ("g", "a")])
    ids = [o.message_id for o in result.outcomes]
    assert {group_of_message_id(i) for i in ids} == {GROUP_ID}
    found = run_query(n.store, {"q": "messages_by_id", "ids": [ids[2], 12345, ids[0]]})
    assert [m["message_id"] for m in found] == [ids[2], ids[0]]
    assert [m["message_seq"] for m in found] == [3, 1]


def test_last_message_and_client_msg_no(n: Node) -> None:
    assert run_query(n.store, {"q": "last_message", "channel_id": "g", "channel_type": 2}) is None
    n.members("g", ["a"])
    n.send("g", "a")
    last = run_query(n.store, {"q": "last_message", "channel_id": "g", "channel_type": 2})
    assert last["message_seq"] == 1


# --- unread ------------------------------------------------------------------------------------


def test_group_unread_counts_only_red_dot_messages_after_joining(n: Node) -> None:
    n.members("g", ["a"])
    n.send("g", "a")
    n.members("g", ["b"])  # joins at head 1: the first message is history, not unread
    assert n.unread("b", "g") == 0
    n.send("g", "a")
    n.send("g", "a", flags=0)  # no red dot
    n.send("g", "a", flags=RED | int(HeaderFlag.SYNC_ONCE))  # a command
    n.send("g", "a")
    assert n.unread("b", "g") == 2
    assert n.unread("a", "g") == 0  # own messages never count


def test_sending_moves_the_senders_read_floor(n: Node) -> None:
    n.members("g", ["a", "b"])
    n.send_many([("g", "a"), ("g", "a"), ("g", "a")])
    assert n.unread("b", "g") == 3
    n.send("g", "b")
    row = n.row("b", "g")
    assert (row["unread"], row["read"]) == (0, 4)
    assert n.unread("a", "g") == 1


def test_clear_unread_to_a_seq_and_floor_never_moves_back(n: Node) -> None:
    n.members("g", ["a", "b"])
    n.send_many([("g", "a")] * 5)
    assert n.conv("b", "g", pb.ConversationOp.CLEAR_UNREAD, seq=3)["unread"] == 2
    assert n.conv("b", "g", pb.ConversationOp.CLEAR_UNREAD, seq=1)["readed_to_msg_seq"] == 3
    assert n.conv("b", "g", pb.ConversationOp.CLEAR_UNREAD, seq=99)["unread"] == 0
    assert n.row("b", "g")["read"] == 5  # clamped to the head


def test_set_unread_then_new_messages_add_to_it(n: Node) -> None:
    n.members("g", ["a", "b"])
    n.send("g", "a")
    n.conv("b", "g", pb.ConversationOp.SET_UNREAD, unread=7)
    assert n.unread("b", "g") == 7
    n.send("g", "a")
    assert n.unread("b", "g") == 8
    n.conv("b", "g", pb.ConversationOp.CLEAR_UNREAD)
    assert n.unread("b", "g") == 0


def test_removed_member_is_capped_and_rejoin_keeps_old_unread(n: Node) -> None:
    n.members("g", ["a", "b"])
    n.send_many([("g", "a")] * 2)
    n.members("g", remove=["b"])
    n.send_many([("g", "a")] * 3)  # not b's
    row = n.row("b", "g")
    assert (row["unread"], row["top"]) == (2, 2)
    n.members("g", ["b"])
    assert n.unread("b", "g") == 2
    n.send("g", "a")
    assert n.unread("b", "g") == 3


def test_reset_that_keeps_a_member_keeps_its_unread(n: Node) -> None:
    n.members("g", ["a", "b"])
    n.send("g", "a")
    n.members("g", ["a", "b"], reset_subscribers=True)
    n.send("g", "a")
    assert n.unread("b", "g") == 2


def test_person_rows_start_with_the_first_message(n: Node) -> None:
    cid = person_channel_id("alice", "bob")
    assert n.row("alice", cid, PERSON) is None
    n.send(cid, "alice", ctype=PERSON)
    n.send(cid, "alice", ctype=PERSON)
    assert n.unread("bob", cid, PERSON) == 2
    assert n.unread("alice", cid, PERSON) == 0


def test_data_temp_and_live_channels_have_no_conversations(n: Node) -> None:
    for ctype in (3, 7, 8, 9):
        op = pb.ChannelUpdate(channel_id="x", channel_type=ctype, add_subscribers=["a", "b"])
        n.apply(pb.Command(meta=pb.MetaOp(channel=op)))
        # Sends to these types are not allowed yet (another slice): apply the hook directly.
        ctx = ApplyContext(GROUP_ID, n.store, n.store.batch(), T0)
        record = MessageRecord(1 << 30, 1, T0, "x", ctype, "a", "", b"{}", flags=RED)
        ctx.wb.append_message(record)
        on_message(ctx, record)
        n.store.write(ctx.wb)
    assert n.row("b", "x", 3) is not None  # customer service is group-like
    assert [c["channel_type"] for c in n.convs("b")] == [3]
    assert all(n.row("b", "x", t) is None for t in (7, 8, 9))


# --- mentions ----------------------------------------------------------------------------------


def test_mentions_of_a_user_and_of_everyone(n: Node) -> None:
    n.members("g", ["a", "b", "c"])
    n.send("g", "a", payload={"type": 1, "content": "hi", "mention": {"uids": ["b"]}})
    assert (n.row("b", "g")["mention"], n.row("c", "g")["mention"]) == (1, 0)
    n.conv("b", "g", pb.ConversationOp.CLEAR_UNREAD)
    assert n.row("b", "g")["mention"] == 0
    n.send("g", "a", payload={"mention": {"all": 1}})
    assert (n.row("b", "g")["mention"], n.row("c", "g")["mention"]) == (1, 1)
    assert n.row("a", "g")["mention"] == 0  # the sender read its own
    n.send("g", "a", payload=b'{"mention": not json')  # ignored, not a crash
    # Nested deeper than the parser recurses: ignored too, never an error in the apply path.
    n.send("g", "a", payload=b'{"mention":{"all":1},"a":' + b"[" * 6000 + b"]" * 6000 + b"}")
    # Too deep to read safely (a node with payload_conventions off lets it through): no
    # mention on any replica, and the apply goes on.
    deep = b'{"mention": {"uids": ["c"]}, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    n.send("g", "a", payload=deep)
    assert n.row("c", "g")["mention"] == 1  # still the @all one, not this
    n.members("g", ["d"])
    assert n.row("d", "g")["mention"] == 0  # joined after the mention


def _mention_row(n: Node, uid: str, cid: str = "g", now_ms: int | None = None) -> int:
    q = {"q": "conversation_row", "uid": uid, "channel_id": cid, "channel_type": GROUP}
    if now_ms is not None:
        q["now_ms"] = now_ms
    return int(run_query(n.store, q)["mention"])


def _message_op(n: Node, kind: int, seqs: list[int], **kw: Any) -> None:
    op = pb.MessageOp(kind=kind, channel_id="g", channel_type=GROUP, message_seqs=seqs, **kw)
    result = pb.MetaResult.FromString(n.apply(pb.Command(meta=pb.MetaOp(message=op))))
    assert result.reason == ReasonCode.SUCCESS


def _send_expiring(n: Node, payload: Any, expire_s: int) -> pb.SendOutcome:
    item = pb.SendItem(
        from_uid="a",
        channel_id="g",
        channel_type=GROUP,
        payload=json.dumps(payload).encode(),
        flags=RED,
        expire=expire_s,
        trusted=True,
    )
    result = pb.SendBatchResult.FromString(n.apply(pb.Command(send=pb.SendBatch(items=[item]))))
    return result.outcomes[0]


MENTION_B = {"type": 1, "content": "@b", "mention": {"uids": ["b"]}}
MENTION_ALL = {"type": 1, "content": "@all", "mention": {"all": 1}}


@pytest.mark.parametrize("payload", [MENTION_B, MENTION_ALL], ids=["uid", "all"])
def test_mention_clears_when_its_message_is_deleted_for_everyone(n: Node, payload: Any) -> None:
    n.members("g", ["a", "b"])
    n.send("g", "a", payload=payload)
    n.send("g", "a")
    assert _mention_row(n, "b") == 1
    _message_op(n, pb.MessageOp.DELETE_RANGE, [1])
    assert (_mention_row(n, "b"), n.unread("b", "g")) == (0, 1)


def test_mention_stays_while_a_later_mentioning_message_is_left(n: Node) -> None:
    n.members("g", ["a", "b"])
    n.send("g", "a", payload=MENTION_B)
    n.send("g", "a", payload=MENTION_ALL)
    _message_op(n, pb.MessageOp.DELETE_RANGE, [1])
    assert _mention_row(n, "b") == 1  # the @all of seq 2 is still there
    _message_op(n, pb.MessageOp.DELETE_RANGE, [2])
    assert _mention_row(n, "b") == 0


@pytest.mark.parametrize("payload", [MENTION_B, MENTION_ALL], ids=["uid", "all"])
def test_mention_clears_when_its_message_expires(n: Node, payload: Any) -> None:
    n.members("g", ["a", "b"])
    assert _send_expiring(n, payload, 10).message_seq == 1
    sent_ms = n.time_ms
    n.send("g", "a")
    assert _mention_row(n, "b", now_ms=sent_ms + 9_999) == 1
    # Expired but not yet reclaimed: reads hide the message, and the mark with it.
    assert _mention_row(n, "b", now_ms=sent_ms + 10_000) == 0
    (expired,) = plan(n.store, sent_ms + 10_000, 0.0)
    n.time_ms = sent_ms + 10_000  # the command's time decides, as on every replica
    n.apply(pb.Command(meta=pb.MetaOp(message=expired)))
    assert n.store.get_message(GROUP, "g", 1) is None
    assert _mention_row(n, "b", now_ms=sent_ms) == 0  # reclaimed: gone at any time


def test_an_earlier_mention_survives_a_later_one_expiring(n: Node) -> None:
    n.members("g", ["a", "b"])
    n.send("g", "a", payload=MENTION_B)
    _send_expiring(n, MENTION_B, 10)
    sent_ms = n.time_ms
    (expired,) = plan(n.store, sent_ms + 10_000, 0.0)
    n.time_ms = sent_ms + 10_000
    n.apply(pb.Command(meta=pb.MetaOp(message=expired)))
    assert n.store.get_message(GROUP, "g", 2) is None
    assert _mention_row(n, "b", now_ms=sent_ms + 20_000) == 1  # seq 1 still names b
    n.conv("b", "g", pb.ConversationOp.CLEAR_UNREAD, seq=1)
    assert _mention_row(n, "b", now_ms=sent_ms + 20_000) == 0


def test_mention_clears_on_retention(n: Node) -> None:
    n.members("g", ["a", "b"])
    n.send("g", "a", payload=MENTION_B)
    sent_ms = n.time_ms
    _message_op(n, pb.MessageOp.SET_RETENTION, [], retention_days=1.0)
    (old,) = plan(n.store, sent_ms + 86_400_001, 0.0)
    n.apply(pb.Command(meta=pb.MetaOp(message=old)))
    assert n.store.get_message(GROUP, "g", 1) is None
    assert _mention_row(n, "b") == 0
    [conv] = n.convs("b")
    assert (conv["mention"], conv["unread"]) == (0, 0)


def test_mention_clears_when_its_message_is_revoked(n: Node) -> None:
    n.members("g", ["a", "b"])
    n.send("g", "a", payload=MENTION_B)
    _message_op(n, pb.MessageOp.REVOKE, [1], actor_uid="a", admin=True)
    assert _mention_row(n, "b") == 0


def test_an_older_mention_is_found_past_a_page_of_gone_ones(
    n: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.groups.conversations as conversations

    monkeypatch.setattr(conversations, "_MENTION_PAGE", 2)
    n.members("g", ["a", "b"])
    n.send_many([("g", "a")] * 5, payload=MENTION_B)
    for seq in (1, 2, 3, 5):
        _message_op(n, pb.MessageOp.REVOKE, [seq], actor_uid="a", admin=True)
    assert _mention_row(n, "b") == 1  # seq 4, on the second page of b's mentions
    _message_op(n, pb.MessageOp.REVOKE, [4], actor_uid="a", admin=True)
    assert _mention_row(n, "b") == 0


def test_mention_index_goes_with_erased_messages(n: Node) -> None:
    """Erasing a message drops what it recorded about mentions: nothing is left behind."""
    n.members("g", ["a", "b", "c"])
    n.send("g", "a", payload={"mention": {"uids": ["b", "c"], "all": 1}})
    assert n.store.prefix_items("convs", b"M") != []
    _message_op(n, pb.MessageOp.DELETE_RANGE, [1])
    assert n.store.prefix_items("convs", b"M") == []


# --- delete and clear --------------------------------------------------------------------------


def test_delete_hides_until_a_newer_message(n: Node) -> None:
    n.members("g", ["a", "b"])
    n.send("g", "a")
    assert [c["channel_id"] for c in n.convs("b")] == ["g"]
    n.conv("b", "g", pb.ConversationOp.DELETE)
    assert n.convs("b") == []
    assert n.unread("b", "g") == 0
    n.send("g", "a")
    [conv] = n.convs("b")
    assert (conv["unread"], [m["message_seq"] for m in conv["recents"]]) == (1, [2])


def test_clear_messages_hides_them_and_sets_cleared_to(n: Node) -> None:
    n.members("g", ["a", "b"])
    n.send_many([("g", "a")] * 3)
    n.conv("b", "g", pb.ConversationOp.CLEAR_MESSAGES, seq=2)
    assert cleared_to(n.store, "b", GROUP, "g") == 2
    assert cleared_to(n.store, "a", GROUP, "g") == 0
    [conv] = n.convs("b")
    assert [m["message_seq"] for m in conv["recents"]] == [3]
    assert conv["unread"] == 1


def test_sync_rows_order_count_and_filters(n: Node) -> None:
    n.members("g1", ["a", "b"])
    n.members("g2", ["a", "b"])
    n.send_many([("g1", "a")] * 4)
    n.send("g2", "a")
    convs = n.convs("b", msg_count=2)
    by_id = {c["channel_id"]: c for c in convs}
    assert [m["message_seq"] for m in by_id["g1"]["recents"]] == [3, 4]
    assert by_id["g1"]["last_msg_seq"] == 4 and by_id["g1"]["unread"] == 4
    # The client already has g1 up to 4: only g2 comes back.
    assert [c["channel_id"] for c in n.convs("b", known={"2:g1": 4})] == ["g2"]
    n.conv("b", "g2", pb.ConversationOp.CLEAR_UNREAD)
    assert [c["channel_id"] for c in n.convs("b", only_unread=1)] == ["g1"]
    assert n.convs("b", exclude_channel_types=[2]) == []
    newest = max(c["version"] for c in convs)
    assert [c["channel_id"] for c in n.convs("b", version=newest)] == ["g2"]  # the clear moved it


def test_replay_after_restart_changes_nothing(n: Node, tmp_path: Path) -> None:
    n.members("g", ["a", "b"])
    n.send("g", "a")
    command = pb.Command(
        time_ms=T0,
        send=pb.SendBatch(
            items=[
                pb.SendItem(
                    from_uid="a",
                    channel_id="g",
                    channel_type=GROUP,
                    payload=b"x",
                    flags=RED,
                    trusted=True,
                )
            ]
        ),
    )
    raw = command.SerializeToString()
    n.machine.apply(n.index + 1, raw)
    n.machine.apply(n.index + 1, raw)  # replayed: already applied
    assert n.unread("b", "g") == 2


def test_row_encoding_is_every_field_in_order() -> None:
    """Replicas must write identical bytes: the encoding is the dataclass fields in order."""
    row = Row("g1", 2, read=3, override=1, cap=9, updated_ms=5)
    row.mark_read(4)
    assert row.encode() == json.dumps(dataclasses.asdict(row), separators=(",", ":")).encode()
    assert Row.decode(row.encode()) == row
