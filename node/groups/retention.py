"""What a slot group's leader should delete now: expired messages, messages past their
channel's retention, and range deletions not yet finished.

``plan`` only reads the store and returns ``MessageOp``s; the reclaim task (``node/reclaim.py``)
proposes them, and apply (``message_ops``) decides again by the command's time, so a replica
never deletes on its own clock.
"""

from __future__ import annotations

import json
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb

from ..storage import MessageRecord, Store
from . import msgx
from .message_ops import MAX_SEQS

Kind = pb.MessageOp.Kind
DAY_MS = 86_400_000

EXPIRY_SCAN = 5000
"""Expiry index entries looked at per pass (the earliest deadlines first)."""
RETENTION_SCAN = 500
"""Oldest messages of one channel looked at per pass; a longer backlog takes more passes."""


def plan(store: Store, now_ms: int, global_days: float) -> list[pb.MessageOp]:
    return [*_expired(store, now_ms), *_pending(store), *_retention(store, now_ms, global_days)]


def _expired(store: Store, now_ms: int) -> list[pb.MessageOp]:
    by_channel: dict[tuple[int, str], list[int]] = {}
    for key, value in store.prefix_items(msgx.CF, msgx.EXPIRY, limit=EXPIRY_SCAN):
        deadline, _, seq = msgx.parse_expiry_key(key)
        if deadline > now_ms:
            break  # the index is in deadline order
        ref = json.loads(value)
        by_channel.setdefault((ref["channel_type"], ref["channel_id"]), []).append(seq)
    ops = []
    for (ctype, cid), seqs in by_channel.items():
        for at in range(0, len(seqs), MAX_SEQS):
            ops.append(
                pb.MessageOp(
                    kind=Kind.DELETE_EXPIRED,
                    channel_id=cid,
                    channel_type=ctype,
                    message_seqs=seqs[at : at + MAX_SEQS],
                )
            )
    return ops


def _pending(store: Store) -> list[pb.MessageOp]:
    ops = []
    for key, value in store.prefix_items(msgx.CF, msgx.PENDING):
        ck = key[len(msgx.PENDING) :]
        ref = json.loads(value)
        ops.append(
            pb.MessageOp(
                kind=Kind.DELETE_RANGE,
                channel_id=ref["channel_id"],
                channel_type=ref["channel_type"],
                message_seqs=[msgx.floor(store, ck)],
            )
        )
    return ops


def _retention(store: Store, now_ms: int, global_days: float) -> list[pb.MessageOp]:
    """One DELETE_RANGE per channel whose oldest messages are past its retention: the
    channel's own setting, else the global one (0 = keep)."""
    overrides: dict[bytes, Any] = {
        key[len(msgx.RETENTION) :]: json.loads(value)
        for key, value in store.prefix_items(msgx.CF, msgx.RETENTION)
    }
    channels = dict.fromkeys(overrides)
    if global_days > 0:
        # Every channel with messages has a head in "channels" (key b"H" + channel key).
        for key, _ in store.prefix_items("channels", b"H"):
            channels.setdefault(key[1:])
    ops = []
    for ck in channels:
        days = overrides[ck]["days"] if ck in overrides else global_days
        if days <= 0:
            continue
        cutoff = now_ms - int(days * DAY_MS)
        last: MessageRecord | None = None
        for _, raw in store.prefix_items("messages", ck, limit=RETENTION_SCAN):
            r = MessageRecord.decode(raw)
            if r.timestamp_ms > cutoff:
                break
            last = r
        if last is not None:
            ops.append(
                pb.MessageOp(
                    kind=Kind.DELETE_RANGE,
                    channel_id=last.channel_id,
                    channel_type=last.channel_type,
                    message_seqs=[last.message_seq],
                )
            )
    return ops
