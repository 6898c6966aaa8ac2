"""Command (sync_once) messages through ``GroupMachine.apply`` on a real RocksDB store: the
command twin, per-user queues, per-device cursors and trimming; plus the pure helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.command_channels import cmd_of, source_of, temp_channel_id
from node.groups import command_sync
from node.groups.machine import GroupMachine
from node.groups.reads import run_query
from node.storage import Store
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import HeaderFlag, ReasonCode

GROUP_ID = 3
T0 = 1_800_000_000_000


class Machine:
    def __init__(self, path: Path) -> None:
        self.store = Store(path)
        self.machine = GroupMachine(GROUP_ID, self.store)
        self.index = 0

    def apply(self, command: pb.Command) -> bytes:
        self.index += 1
        return self.machine.apply(self.index, command.SerializeToString())

    def send(self, **fields: Any) -> pb.SendOutcome:
        raw = self.apply(
            pb.Command(time_ms=T0 + self.index, send=pb.SendBatch(items=[pb.SendItem(**fields)]))
        )
        return pb.SendBatchResult.FromString(raw).outcomes[0]

    def ack(self, uid: str, flag: int, position: int) -> None:
        op = pb.MetaOp(command_ack=pb.CommandAck(uid=uid, device_flag=flag, position=position))
        result = pb.MetaResult.FromString(self.apply(pb.Command(time_ms=T0, meta=op)))
        assert result.reason == ReasonCode.SUCCESS

    def pending(self, uid: str, flag: int = 0, after: int = 0, limit: int = 100) -> list[Any]:
        q = {"q": "cmd_pending", "uid": uid, "device_flag": flag, "after": after, "limit": limit}
        return run_query(self.store, q)["entries"]  # type: ignore[no-any-return]


@pytest.fixture
def m(tmp_path: Path) -> Machine:
    machine = Machine(tmp_path / "db")
    op = pb.MetaOp(
        channel=pb.ChannelUpdate(channel_id="g", channel_type=2, add_subscribers=["a", "b", "c"])
    )
    machine.apply(pb.Command(time_ms=T0, meta=op))
    return machine


def test_helpers() -> None:
    assert cmd_of("g") == "g____cmd" == cmd_of("g____cmd")
    assert source_of("g____cmd") == "g" and source_of("g") == "g"
    assert temp_channel_id(["b", "a", "b"]) == temp_channel_id(["a", "b"]) != temp_channel_id(["a"])
    assert command_sync.decode_position(command_sync.encode_position(77, 256)) == (77, 256)


def test_sync_once_is_stored_in_the_twin_and_queued_for_recipients(m: Machine) -> None:
    out = m.send(
        from_uid="a",
        channel_id="g",
        channel_type=2,
        payload=b"x",
        flags=HeaderFlag.SYNC_ONCE,
        client_msg_no="n1",
    )
    assert out.reason == ReasonCode.SUCCESS and out.message_seq == 1
    assert m.store.head_seq(2, "g") == 0 and m.store.head_seq(2, "g____cmd") == 1
    assert m.pending("a") == []  # not for the sender
    for uid in ("b", "c"):
        (entry,) = m.pending(uid)
        assert entry["message"]["channel_id"] == "g____cmd"
        assert entry["sync_seq"] == command_sync.encode_position(1, GROUP_ID)
    # A retry with the same client_msg_no is a duplicate: not queued twice.
    again = m.send(
        from_uid="a",
        channel_id="g",
        channel_type=2,
        payload=b"x",
        flags=HeaderFlag.SYNC_ONCE,
        client_msg_no="n1",
    )
    assert again.duplicate and len(m.pending("b")) == 1
    # Outsiders are refused by the source channel's rules.
    refused = m.send(
        from_uid="z", channel_id="g", channel_type=2, payload=b"x", flags=HeaderFlag.SYNC_ONCE
    )
    assert refused.reason == ReasonCode.SUBSCRIBER_NOT_EXIST


def test_explicit_subscribers_need_a_trusted_sender(m: Machine) -> None:
    tmp = temp_channel_id(["b"])
    refused = m.send(
        from_uid="a",
        channel_id=tmp,
        channel_type=8,
        payload=b"x",
        flags=HeaderFlag.SYNC_ONCE,
        subscribers=["b"],
    )
    assert refused.reason == ReasonCode.NOT_ALLOW_SEND
    ok = m.send(
        from_uid="a",
        channel_id=tmp,
        channel_type=8,
        payload=b"x",
        flags=HeaderFlag.SYNC_ONCE,
        subscribers=["b"],
        trusted=True,
    )
    assert ok.reason == ReasonCode.SUCCESS
    assert [e["message"]["channel_id"] for e in m.pending("b")] == [f"{tmp}____cmd"]


def test_cursors_are_per_device_and_trim_what_all_acknowledged(m: Machine) -> None:
    for i in range(4):
        m.send(
            from_uid="a",
            channel_id="g",
            channel_type=2,
            payload=bytes([i]),
            flags=HeaderFlag.SYNC_ONCE,
        )
    assert len(m.pending("b")) == 4
    m.ack("b", 0, 3)
    assert [e["message"]["message_seq"] for e in m.pending("b", 0)] == [4]
    assert len(m.pending("b", 1)) == 4  # the web device has its own cursor
    m.ack("b", 0, 99)  # never past the queue's end
    m.send(from_uid="a", channel_id="g", channel_type=2, payload=b"5", flags=HeaderFlag.SYNC_ONCE)
    assert [e["message"]["message_seq"] for e in m.pending("b", 0)] == [5]
    m.ack("b", 1, 5)
    m.ack("b", 2, 2)
    m.ack("b", 0, 1)  # never backwards
    assert len(m.pending("b", 0)) == 1
    # Entries 1..2 are acknowledged by every device flag: gone from the store.
    left = m.store.prefix_items(command_sync.CF, b"qb\x00")
    assert len(left) == 3
    # ``after`` skips this group's entries up to a position without moving anything.
    after = command_sync.encode_position(4, GROUP_ID)
    assert [e["message"]["message_seq"] for e in m.pending("b", 2, after=after)] == [5]
    assert len(m.pending("b", 2)) == 3
