"""Stream messages (WuKongIM protocol 5 and later): events appended to an "anchor" message.

An app backend sends the anchor with ``is_stream`` (stored with ``Setting.STREAM``), then
appends events to it with ``POST /message/event``: ``stream.delta`` increments and one terminal
event per lane (``stream.finish``, ``.close``, ``.error``, ``.cancel``). Every event is a
``StreamEvent`` applied in the channel's slot group, so events are replicated and survive a
leader change; they are numbered per message (``msg_event_seq``) and the text of public deltas
is folded into a per-lane snapshot that history shows as ``event_meta``. After commit the
events go to online sessions as EVENT frames (protocol >= 5 only; ``session.push_event``).

Keys in column family ``msgx`` (the other prefixes belong to ``msgx.py`` and ``msgindex.py``):

- ``S 0x00 ck seq``                 -> JSON summary {"last", "lanes": {key: lane}}
- ``S 0x01 ck seq msg_event_seq``   -> JSON event (``_event_json``)
- ``S 0x02 ck seq event_id``        -> msg_event_seq of that event id (idempotency)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ReasonCode, Setting

from ..channels import view_channel_id
from ..pipeline_rules import SYSTEM_UID
from ..storage import MessageRecord, Store, keys
from . import msgx, views
from .context import ApplyContext

SUMMARY = b"S\x00"
EVENT = b"S\x01"
EVENT_ID = b"S\x02"

STATUS_OF = {
    "stream.delta": "open",
    "stream.finish": "finished",
    "stream.close": "closed",
    "stream.error": "error",
    "stream.cancel": "cancelled",
}
"""Event types and the lane status each leaves behind; only ``open`` takes more events."""

MAX_EVENTS = 100_000
"""Events one anchor message may collect (every lane together)."""
MAX_PAGE = 1000
"""Events one ``/message/eventsync`` page may hold."""


def _summary_key(ck: bytes, seq: int) -> bytes:
    return SUMMARY + ck + keys.pack_seq(seq)


def _event_key(ck: bytes, seq: int, event_seq: int) -> bytes:
    return EVENT + ck + keys.pack_seq(seq) + keys.pack_seq(event_seq)


def _id_key(ck: bytes, seq: int, event_id: str) -> bytes:
    return EVENT_ID + ck + keys.pack_seq(seq) + event_id.encode()


def find_anchor(
    store: Store, channel_type: int, channel_id: str, from_uid: str, client_msg_no: str, mid: int
) -> MessageRecord | None:
    """The anchor by (sender, client_msg_no), or by message id when no client_msg_no is given."""
    if client_msg_no:
        found = store.get_dedupe(channel_type, channel_id, from_uid, client_msg_no)
        return None if found is None else store.get_message(channel_type, channel_id, found[1])
    return views.find_by_id(store, channel_type, channel_id, mid) if mid else None


def _visible(store: Store, r: MessageRecord, now_ms: int) -> bool:
    """Not gone (expired, deleted) and not revoked: a stream can still take events."""
    if views.is_gone(store, r, now_ms):
        return False
    ck = keys.channel_key(r.channel_type, r.channel_id)
    return store.get_raw(msgx.CF, msgx.seq_key(msgx.REVOKE, ck, r.message_seq)) is None


def _result(data: dict[str, Any]) -> pb.MetaResult:
    return pb.MetaResult(reason=ReasonCode.SUCCESS, data=msgx.dump(data))


def _apply(ctx: ApplyContext, op: pb.StreamEvent) -> pb.MetaResult:
    anchor = find_anchor(
        ctx.store, op.channel_type, op.channel_id, op.from_uid, op.client_msg_no, op.message_id
    )
    if anchor is None or not _visible(ctx.store, anchor, ctx.time_ms):
        return _result({"not_found": "no such message in this channel (or it is gone)"})
    if not anchor.setting & Setting.STREAM:
        return _result({"conflict": "the message is not a stream (send it with is_stream 1)"})
    status = STATUS_OF.get(op.event_type)
    if status is None:
        return pb.MetaResult(reason=ReasonCode.SYSTEM_ERROR, detail="unknown event type")
    ck = keys.channel_key(anchor.channel_type, anchor.channel_id)
    seq = anchor.message_seq
    id_key = _id_key(ck, seq, op.event_id)
    known = _known_event_seq(ctx, id_key)
    if known is not None:
        # A retried event: the answer of the first, nothing applied again.
        event = _read(ctx, _event_key(ck, seq, known))
        return _result({"event": event, "duplicate": True, "parties": []})
    skey = _summary_key(ck, seq)
    summary = _read(ctx, skey) or {"last": 0, "lanes": {}}
    lane = summary["lanes"].get(op.event_key) or _new_lane()
    conflict = _conflict(summary, lane, op.event_key)
    if conflict is not None:
        return _result({"conflict": conflict})
    event_seq = summary["last"] + 1
    payload = json.loads(op.payload) if op.payload else {}
    _fold(lane, op, payload)
    lane["stream_status"] = status
    lane["last_msg_event_seq"] = event_seq
    summary["lanes"][op.event_key] = lane
    summary["last"] = event_seq
    event = _event_json(anchor, op, event_seq, status, payload, ctx.time_ms)
    ekey = _event_key(ck, seq, event_seq)
    ctx.wb.put_raw(msgx.CF, ekey, msgx.dump(event))
    ctx.wb.put_raw(msgx.CF, id_key, keys.pack_seq(event_seq))
    ctx.wb.put_raw(msgx.CF, skey, msgx.dump(summary))
    # Later events of the same command read these back (a batch cannot be read).
    ctx.cache[ekey] = event
    ctx.cache[id_key] = event_seq
    ctx.cache[skey] = summary
    audience = (
        [anchor.from_uid]
        if op.private
        else views.parties(ctx.store, anchor.channel_type, anchor.channel_id)
    )
    return _result({"event": event, "duplicate": False, "parties": audience})


def _known_event_seq(ctx: ApplyContext, id_key: bytes) -> int | None:
    """The msg_event_seq an event id already got (a retry), from this command or the store."""
    known: int | None = ctx.cache.get(id_key)
    if known is None:
        raw = ctx.store.get_raw(msgx.CF, id_key)
        known = None if raw is None else keys.unpack_seq(raw)
    return known


def _read(ctx: ApplyContext, key: bytes) -> Any:
    """A JSON value of ``msgx``, as this command left it or else as stored."""
    return ctx.cache.get(key) or msgx.get_json(ctx.store, key)


def _new_lane() -> dict[str, Any]:
    return {"stream_status": "open", "snapshot": "", "truncated": False, "last_msg_event_seq": 0}


def _conflict(summary: dict[str, Any], lane: dict[str, Any], event_key: str) -> str | None:
    """Why the stream takes no more events on this lane, or ``None``."""
    if lane["stream_status"] != "open":
        return f"lane {event_key!r} of this stream is {lane['stream_status']}"
    if summary["last"] >= MAX_EVENTS:
        return f"this stream has {MAX_EVENTS} events, the most it may"
    return None


def _fold(lane: dict[str, Any], op: pb.StreamEvent, payload: Any) -> None:
    """Append a public delta's text to the lane's snapshot, cut at ``snapshot_limit`` bytes."""
    delta = payload.get("delta") if isinstance(payload, dict) else None
    if op.event_type == "stream.delta" and isinstance(delta, str) and not op.private:
        folded = lane["snapshot"] + delta
        limit = op.snapshot_limit
        if limit and len(folded.encode()) > limit:
            folded = folded.encode()[:limit].decode(errors="ignore")
            lane["truncated"] = True
        lane["snapshot"] = folded


def _event_json(
    anchor: MessageRecord,
    op: pb.StreamEvent,
    event_seq: int,
    status: str,
    payload: Any,
    time_ms: int,
) -> dict[str, Any]:
    """The stored event: what EVENT frames and ``/message/eventsync`` show."""
    return {
        "channel_id": anchor.channel_id,
        "channel_type": anchor.channel_type,
        "message_id": anchor.message_id,
        "message_seq": anchor.message_seq,
        "client_msg_no": anchor.client_msg_no,
        "from_uid": anchor.from_uid,
        "event_id": op.event_id,
        "event_type": op.event_type,
        "event_key": op.event_key,
        "msg_event_seq": event_seq,
        "stream_status": status,
        "visibility": "private" if op.private else "public",
        "occurred_at": op.occurred_at,
        "timestamp_ms": time_ms,
        "payload": payload,
    }


def event_view(event: dict[str, Any], viewer: str) -> dict[str, Any]:
    """An event as ``viewer`` sees it: a person channel under the peer's uid, the system
    sender as "" (as RECV and ``MessageResp`` show them)."""
    out = dict(event)
    out["channel_id"] = view_channel_id(event["channel_id"], event["channel_type"], viewer)
    if out.get("from_uid") == SYSTEM_UID:
        out["from_uid"] = ""
    return out


def forget(ctx: ApplyContext, ck: bytes, seq: int) -> None:
    """Drop a stream's events with its anchor (retention, expiry)."""
    base = ck + keys.pack_seq(seq)
    ctx.wb.delete_raw(msgx.CF, SUMMARY + base)
    for prefix in (EVENT, EVENT_ID):
        for key, _ in ctx.store.prefix_items(msgx.CF, prefix + base):
            ctx.wb.delete_raw(msgx.CF, key)


def event_meta(store: Store, r: MessageRecord) -> dict[str, Any] | None:
    """What history shows of a stream anchor: each lane's status and folded text."""
    if not r.setting & Setting.STREAM:
        return None
    ck = keys.channel_key(r.channel_type, r.channel_id)
    summary = msgx.get_json(store, _summary_key(ck, r.message_seq)) or {"last": 0, "lanes": {}}
    lanes = [
        {"event_key": name, **lane}
        for name, lane in sorted(summary["lanes"].items(), key=lambda kv: str(kv[0]))
    ]
    return {"last_msg_event_seq": summary["last"], "lanes": lanes}


def _events(store: Store, q: dict[str, Any]) -> dict[str, Any] | None:
    """A page of one anchor's events from ``from_msg_event_seq`` (inclusive), in order."""
    ctype, cid = int(q["channel_type"]), str(q["channel_id"])
    anchor = find_anchor(
        store, ctype, cid, str(q["from_uid"]), str(q.get("client_msg_no", "")), int(q["mid"])
    )
    if anchor is None or not _visible(store, anchor, int(time.time() * 1000)):
        return None
    ck = keys.channel_key(ctype, cid)
    base = EVENT + ck + keys.pack_seq(anchor.message_seq)
    start = base + keys.pack_seq(max(int(q.get("from_msg_event_seq", 1)), 1))
    limit = min(int(q.get("limit", 100)), MAX_PAGE)
    lane = q.get("event_key") or None
    include_private = bool(q.get("include_private"))
    out: list[dict[str, Any]] = []
    more = False
    next_seq = 0
    # A lane filter or private events may skip rows: a page reads a bounded number of them and
    # says where the next page starts (``next_msg_event_seq``).
    rows = store.prefix_items(msgx.CF, base, limit=4 * MAX_PAGE, start=start)
    for key, raw in rows:
        event_seq = keys.unpack_seq(key[len(base) :])
        if len(out) == limit:
            more, next_seq = True, event_seq
            break
        next_seq = event_seq + 1
        event = json.loads(raw)
        if lane is not None and event["event_key"] != lane:
            continue
        if event["visibility"] == "private" and not include_private:
            continue
        out.append(event)
    else:
        more = len(rows) == 4 * MAX_PAGE
    meta = event_meta(store, anchor)
    return {"events": out, "more": more, "next_msg_event_seq": next_seq, "event_meta": meta}


META: dict[str, Callable[[ApplyContext, Any], pb.MetaResult]] = {"stream_event": _apply}
QUERIES: dict[str, Callable[[Store, dict[str, Any]], Any]] = {"stream_events": _events}
