"""Message operations applied by the slot group's state machine on a real RocksDB, no Raft:
revoke, edit, delete for one user, read receipts, range deletion, expiry and retention."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.groups import msgx
from node.groups.machine import GroupMachine
from node.groups.message_ops import DELETE_CHUNK
from node.groups.message_reads import present
from node.groups.reads import run_query
from node.groups.retention import plan
from node.groups.views import find_by_id
from node.storage import Store, keys
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode, Setting
from tests.unit.test_node_machine import T0, Feeder, item

GROUP = int(ChannelType.GROUP)
PERSON = int(ChannelType.PERSON)
Kind = pb.MessageOp.Kind
WINDOW_MS = 120_000


@pytest.fixture
def f(tmp_path: Path) -> Iterator[Feeder]:
    store = Store(tmp_path / "db")
    feeder = Feeder(GroupMachine(3, store))
    feeder.group("g1", ["u1", "u2", "u3"])
    yield feeder
    store.close()


def send(f: Feeder, n: int = 1, *, time_ms: int = T0, **kw: Any) -> list[pb.SendOutcome]:
    out = []
    for _ in range(n):
        res = f.send(item("g1", trusted=True, **kw), time_ms=time_ms)
        assert res.outcomes[0].reason == ReasonCode.SUCCESS
        out.append(res.outcomes[0])
    return out


def op(f: Feeder, time_ms: int = T0, **kw: Any) -> tuple[pb.MetaResult, dict[str, Any]]:
    kw.setdefault("channel_id", "g1")
    kw.setdefault("channel_type", GROUP)
    result = f.meta(pb.MetaOp(message=pb.MessageOp(**kw)), time_ms=time_ms)
    return result, json.loads(result.data) if result.data else {}


def shown(f: Feeder, viewer: str = "u2", now_ms: int = T0, cid: str = "g1") -> list[dict[str, Any]]:
    ctype = PERSON if "@" in cid else GROUP
    return present(f.store, f.store.messages(ctype, cid, 1, 0, 10_000), viewer, now_ms)


# --- revoke ---------------------------------------------------------------------------------


def test_sender_revokes_within_window_and_sync_shows_tombstone(f: Feeder) -> None:
    (m,) = send(f, payload=b"secret")
    res, data = op(
        f,
        T0 + 1000,
        kind=Kind.REVOKE,
        message_seqs=[m.message_seq],
        actor_uid="u1",
        revoke_window_ms=WINDOW_MS,
    )
    assert res.reason == ReasonCode.SUCCESS
    assert data == {"message_id": m.message_id, "message_seq": 1, "from_uid": "u1", "revoker": "u1"}
    (seen,) = shown(f)
    assert seen["revoke"] == 1 and seen["revoker"] == "u1" and seen["payload"] == ""
    # Idempotent: the same answer, and still one tombstone.
    again, data2 = op(
        f,
        T0 + 2000,
        kind=Kind.REVOKE,
        message_id=m.message_id,
        actor_uid="u1",
        revoke_window_ms=WINDOW_MS,
    )
    assert again.reason == ReasonCode.SUCCESS and data2 == data


def test_revoke_refusals_and_admin(f: Feeder) -> None:
    send(f)
    late = T0 + WINDOW_MS + 1
    res, _ = op(
        f, late, kind=Kind.REVOKE, message_seqs=[1], actor_uid="u1", revoke_window_ms=WINDOW_MS
    )
    assert res.reason == ReasonCode.NOT_ALLOW_SEND and "window" in res.detail
    res, _ = op(f, kind=Kind.REVOKE, message_seqs=[1], actor_uid="u2", revoke_window_ms=WINDOW_MS)
    assert res.reason == ReasonCode.NOT_ALLOW_SEND and "sender" in res.detail
    assert "revoke" not in shown(f)[0]
    res, data = op(f, late, kind=Kind.REVOKE, message_seqs=[1], actor_uid="boss", admin=True)
    assert res.reason == ReasonCode.SUCCESS and data["revoker"] == "boss"
    res, data = op(f, kind=Kind.REVOKE, message_seqs=[9], actor_uid="u1", admin=True)
    assert "not_found" in data


def test_find_by_id_skips_deleted_gaps(f: Feeder) -> None:
    sent = send(f, 9)
    op(f, kind=Kind.DELETE_RANGE, message_seqs=[3])
    for s in sent[3:]:
        r = find_by_id(f.store, GROUP, "g1", s.message_id)
        assert r is not None and r.message_seq == s.message_seq
    assert find_by_id(f.store, GROUP, "g1", sent[0].message_id) is None
    assert find_by_id(f.store, GROUP, "g1", 12345) is None


# --- edit -----------------------------------------------------------------------------------


def test_edit_versions_and_refusals(f: Feeder) -> None:
    send(f, payload=b"v0")
    for version, text in ((1, b"v1"), (2, b"v2")):
        res, data = op(
            f, T0 + version, kind=Kind.EDIT, message_seqs=[1], actor_uid="u1", payload=text
        )
        assert res.reason == ReasonCode.SUCCESS
        assert data["version"] == version and sorted(data["parties"]) == ["u1", "u2", "u3"]
    (seen,) = shown(f)
    assert base64.b64decode(seen["payload"]) == b"v2"
    assert seen["edited"] == 2 and seen["edited_at"] == T0 + 2
    res, _ = op(f, kind=Kind.EDIT, message_seqs=[1], actor_uid="u2", payload=b"x")
    assert res.reason == ReasonCode.NOT_ALLOW_SEND
    op(f, kind=Kind.REVOKE, message_seqs=[1], actor_uid="u1", revoke_window_ms=WINDOW_MS)
    res, _ = op(f, kind=Kind.EDIT, message_seqs=[1], actor_uid="u1", payload=b"x")
    assert res.reason == ReasonCode.NOT_ALLOW_SEND and "revoked" in res.detail
    assert shown(f)[0]["payload"] == ""


# --- delete for one user ---------------------------------------------------------------------


def test_delete_for_one_user_hides_only_from_them(f: Feeder) -> None:
    send(f, 3)
    _, data = op(f, kind=Kind.DELETE_FOR_USER, message_seqs=[2, 3, 99], actor_uid="u2")
    assert data == {"message_seqs": [2, 3]}
    assert [m["message_seq"] for m in shown(f, "u2")] == [1]
    assert [m["message_seq"] for m in shown(f, "u3")] == [1, 2, 3]


# --- read receipts ---------------------------------------------------------------------------


def test_read_receipts_count_parties_only_for_receipt_messages(f: Feeder) -> None:
    send(f, setting=int(Setting.RECEIPT))
    send(f)  # no receipt wanted
    _, data = op(f, kind=Kind.READ_RECEIPT, message_seqs=[1, 2], actor_uid="u2")
    assert [r["message_seq"] for r in data["receipts"]] == [1]
    assert data["receipts"][0]["read_count"] == 1
    for reader in ("u2", "u1", "stranger"):  # repeat, the sender, not a subscriber
        _, data = op(f, kind=Kind.READ_RECEIPT, message_seqs=[1], actor_uid=reader)
        assert data["receipts"] == []
    got = run_query(
        f.store, {"q": "receipt", "channel_id": "g1", "channel_type": 2, "message_seq": 1}
    )
    assert got["read_count"] == 1 and got["readers"] == ["u2"] and got["unread_count"] == 1
    _, data = op(f, kind=Kind.READ_RECEIPT, message_seqs=[1], actor_uid="u3")
    assert data["receipts"][0]["read_count"] == 2


# --- deletion, expiry, retention ---------------------------------------------------------------


def _message_keys(store: Store, cid: str = "g1") -> list[int]:
    ck = keys.channel_key(GROUP, cid)
    return [keys.seq_of_message_key(k) for k, _ in store.prefix_items("messages", ck)]


def test_delete_range_removes_keys_and_keeps_head(f: Feeder) -> None:
    send(f, 5, no="")
    f.send(item("g1", trusted=True, no="dedupe-me"))
    op(f, kind=Kind.EDIT, message_seqs=[2], actor_uid="u1", payload=b"x")
    op(f, kind=Kind.DELETE_FOR_USER, message_seqs=[2], actor_uid="u3")
    _, data = op(f, kind=Kind.DELETE_RANGE, message_seqs=[6])
    assert data == {"floor": 6, "deleted": 6}
    assert _message_keys(f.store) == []
    assert f.store.get_dedupe(GROUP, "g1", "u1", "dedupe-me") is None
    assert f.store.prefix_items(msgx.CF, msgx.EDIT) == []
    assert f.store.prefix_items(msgx.CF, msgx.HIDE) == []
    # The head stays: the next message gets seq 7, and a retry of the deleted client_msg_no is
    # a new message (its dedupe entry went with it).
    out = f.send(item("g1", trusted=True, no="dedupe-me")).outcomes[0]
    assert out.message_seq == 7 and not out.duplicate
    assert [m["message_seq"] for m in shown(f)] == [7]


def test_delete_range_in_chunks_hides_at_once(f: Feeder, monkeypatch: pytest.MonkeyPatch) -> None:
    import node.groups.message_ops as mo

    monkeypatch.setattr(mo, "DELETE_CHUNK", 2)
    send(f, 5)
    _, data = op(f, kind=Kind.DELETE_RANGE, message_seqs=[4])
    assert data == {"floor": 4, "deleted": 2}
    assert _message_keys(f.store) == [3, 4, 5]
    assert [m["message_seq"] for m in shown(f)] == [5]  # the floor hides 3 and 4 already
    (pending,) = plan(f.store, T0, 0.0)
    assert pending.kind == Kind.DELETE_RANGE and list(pending.message_seqs) == [4]
    f.meta(pb.MetaOp(message=pending))
    assert _message_keys(f.store) == [5]
    assert plan(f.store, T0, 0.0) == []
    assert DELETE_CHUNK > 2


def test_expired_messages_vanish_and_are_reclaimed(f: Feeder) -> None:
    send(f, expire=10)
    send(f)
    assert [m["message_seq"] for m in shown(f, now_ms=T0 + 9_999)] == [1, 2]
    assert [m["message_seq"] for m in shown(f, now_ms=T0 + 10_000)] == [2]
    assert plan(f.store, T0 + 9_999, 0.0) == []
    (expired,) = plan(f.store, T0 + 10_000, 0.0)
    assert expired.kind == Kind.DELETE_EXPIRED and list(expired.message_seqs) == [1]
    # Apply decides by the command's time: too early, nothing goes.
    f.meta(pb.MetaOp(message=expired), time_ms=T0 + 5_000)
    assert _message_keys(f.store) == [1, 2]
    f.meta(pb.MetaOp(message=expired), time_ms=T0 + 10_000)
    assert _message_keys(f.store) == [2]
    assert f.store.prefix_items(msgx.CF, msgx.EXPIRY) == []


def test_retention_global_and_per_channel(f: Feeder) -> None:
    day = 86_400_000
    send(f, 2, time_ms=T0)
    send(f, 1, time_ms=T0 + 2 * day)
    now = T0 + 2 * day + 1
    assert plan(f.store, now, 0.0) == []  # no retention anywhere
    (old,) = plan(f.store, now, 1.0)
    assert old.kind == Kind.DELETE_RANGE and list(old.message_seqs) == [2]
    op(f, kind=Kind.SET_RETENTION, retention_days=3.0)  # the channel keeps more
    assert plan(f.store, now, 1.0) == []
    op(f, kind=Kind.SET_RETENTION, retention_days=0.5)  # ...or less, with no global retention
    (old,) = plan(f.store, now, 0.0)
    f.meta(pb.MetaOp(message=old))
    assert _message_keys(f.store) == [3]
    assert plan(f.store, now, 0.0) == []
