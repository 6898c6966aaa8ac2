"""Reads of stored messages: how they are presented to a reader, receipts, and lookups by id,
by ``client_msg_no`` and of a channel's last message.

Queries only: nothing here runs in apply, so the reading leader's clock is fine (expired
messages are left out by it). The state they read is written by ``message_ops`` (revokes,
edits, per-user deletes, receipts, the deletion floor), ``msgindex`` (the id index),
``conversations`` (cleared-to) and ``streams`` (a stream's ``event_meta``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from proto.wkproto import Setting

from ..storage import MessageRecord, Store, keys
from . import conversations, msgindex, msgx, streams, views


def present(
    store: Store, records: list[MessageRecord], viewer: str, now_ms: int | None = None
) -> list[dict[str, Any]]:
    """The stored messages as ``viewer`` sees them (``viewer`` "" = no particular user).

    Left out: messages below the channel's deletion floor, expired ones, those the viewer
    cleared or deleted for themself. Revoked ones keep their place with an empty payload;
    edited ones carry their latest payload and version. This is a read (the leader's clock
    is fine here); apply never calls it."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    floors: dict[tuple[int, str], int] = {}
    out: list[dict[str, Any]] = []
    for r in records:
        chan = (r.channel_type, r.channel_id)
        ck = keys.channel_key(*chan)
        if chan not in floors:
            floor = msgx.floor(store, ck)
            if viewer:
                floor = max(floor, conversations.cleared_to(store, viewer, *chan))
            floors[chan] = floor
        seq = r.message_seq
        if seq <= floors[chan] or views.is_expired(r, now):
            continue
        hide_key = msgx.user_key(msgx.HIDE, ck, seq, viewer)
        if viewer and store.get_raw(msgx.CF, hide_key) is not None:
            continue
        m = views.message_json(r)
        revoked = msgx.get_json(store, msgx.seq_key(msgx.REVOKE, ck, seq))
        if revoked is not None:
            m.update(payload="", revoke=1, revoker=revoked["revoker"])
        else:
            edit = msgx.get_json(store, msgx.seq_key(msgx.EDIT, ck, seq))
            if edit is not None:
                m.update(
                    payload=edit["payload"], edited=edit["version"], edited_at=edit["edited_at"]
                )
        meta = streams.event_meta(store, r)
        if meta is not None:
            m["event_meta"] = meta
        out.append(m)
    return out


def _receipt(store: Store, q: dict[str, Any]) -> dict[str, Any] | None:
    ctype, cid, seq = int(q["channel_type"]), q["channel_id"], int(q["message_seq"])
    r = store.get_message(ctype, cid, seq)
    ck = keys.channel_key(ctype, cid)
    if r is None or views.is_gone(store, r, int(time.time() * 1000)):
        return None
    readers = msgx.users_of(store, msgx.RECEIPT, ck, seq)
    unread = set(views.parties(store, ctype, cid)) - {r.from_uid} - set(readers)
    return {
        "message_id": r.message_id,
        "message_seq": seq,
        "from_uid": r.from_uid,
        "receipt": 1 if r.setting & Setting.RECEIPT else 0,
        "read_count": len(readers),
        "unread_count": len(unread),
        "readers": readers,
    }


def _present(store: Store, records: list[MessageRecord], viewer: str) -> list[dict[str, Any]]:
    return present(store, records, viewer) if records else []


def _by_ids(store: Store, q: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored messages among ``ids`` (missing ones are left out), in the order asked."""
    records = []
    for mid in q["ids"][: msgindex.MAX_IDS]:
        where = msgindex.locate(store, int(mid))
        if where is None:
            continue
        record = store.get_message(*where)
        # A message removed since (retention) leaves its index entry behind: not found.
        if record is not None and record.message_id == int(mid):
            records.append(record)
    return _present(store, records, str(q.get("login_uid", "")))


def _by_client_msg_no(store: Store, q: dict[str, Any]) -> dict[str, Any] | None:
    ctype, cid = int(q["channel_type"]), str(q["channel_id"])
    found = store.get_dedupe(ctype, cid, str(q["from_uid"]), str(q["client_msg_no"]))
    if found is None:
        return None
    record = store.get_message(ctype, cid, found[1])
    if record is None:
        return None
    presented = _present(store, [record], str(q.get("login_uid", "")))
    return presented[0] if presented else None


def _last_message(store: Store, q: dict[str, Any]) -> dict[str, Any] | None:
    ctype, cid = int(q["channel_type"]), str(q["channel_id"])
    head = store.head_seq(ctype, cid)
    record = store.get_message(ctype, cid, head) if head else None
    if record is None:
        return None
    presented = _present(store, [record], str(q.get("login_uid", "")))
    return presented[0] if presented else None


QUERIES: dict[str, Callable[[Store, dict[str, Any]], Any]] = {
    "receipt": _receipt,
    "messages_by_id": _by_ids,
    "message_by_client_msg_no": _by_client_msg_no,
    "last_message": _last_message,
}
