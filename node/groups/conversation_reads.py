"""Reads of conversation rows: one user's row in one channel, and this group's part of a
user's conversation list (``/conversation/sync``).

Queries only: the rows, counters and mention index they read are written in apply by
``conversations.py`` (which documents the layout and the unread and "@me" rules).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ..ids import committed_ms
from ..storage import Store
from ..storage.keys import channel_key
from . import conversations, message_reads


def _now_ms(q: dict[str, Any]) -> int:
    """The reading leader's clock (expired messages mention no one); a query may pin it
    (tests)."""
    return int(q["now_ms"]) if "now_ms" in q else int(time.time() * 1000)


def _row_query(store: Store, q: dict[str, Any]) -> dict[str, Any] | None:
    """One user's row in one channel, with its unread (for ``peerRead`` and tests)."""
    ctype, cid = int(q["channel_type"]), str(q["channel_id"])
    row = conversations.load_row(store, str(q["uid"]), ctype, cid)
    if row is None:
        return None
    ck = channel_key(ctype, cid)
    top = row.top(store.head_seq(ctype, cid))
    uid = str(q["uid"])
    return {
        **asdict(row),
        "unread": conversations.stored_unread(store, row, top, ck),
        "mention": 1 if conversations.mentioned(store, uid, row, ck, top, _now_ms(q)) else 0,
        "top": top,
    }


def _conversations(store: Store, q: dict[str, Any]) -> list[dict[str, Any]]:
    """This group's part of ``/conversation/sync`` for ``uid`` (reference §5.3, v2 rules).

    ``known`` maps "type:canonical id" to the client's last seq; ``version`` > 0 asks only for
    rows changed after it."""
    uid = str(q["uid"])
    version = int(q.get("version", 0))
    only_unread = bool(q.get("only_unread", 0))
    msg_count = max(0, min(int(q.get("msg_count", 20)), conversations.MAX_RECENTS))
    exclude = {int(t) for t in q.get("exclude_channel_types", [])}
    known: dict[str, int] = {str(k): int(v) for k, v in dict(q.get("known", {})).items()}
    prefix = conversations.rows_prefix(uid)
    now_ms = _now_ms(q)
    out = []
    for key, raw in store.prefix_items("convs", prefix):
        row = conversations.Row.decode(raw)
        ctype, cid = row.channel_type, row.channel_id
        if ctype in exclude:
            continue
        ck = key[len(prefix) :]
        top = row.top(store.head_seq(ctype, cid))
        if top <= row.deleted:
            continue  # deleted and nothing newer since (or no message at all)
        last = store.get_message(ctype, cid, top)
        last_ms = last.timestamp_ms if last is not None else 0
        # The commit time from the id too: an imported last message carries its original (older)
        # timestamp, yet the row changed when it was imported.
        committed = committed_ms(last.message_id) if last is not None else 0
        row_version = max(last_ms, committed, row.updated_ms)
        if version and row_version <= version:
            continue
        client_seq = known.get(f"{ctype}:{cid}")
        if client_seq is not None and top <= client_seq:
            continue  # the client has every message of it (v2 drops such rows)
        unread = conversations.stored_unread(store, row, top, ck)
        if only_unread and unread == 0:
            continue
        if client_seq is not None:
            start = client_seq + 1
        elif version or only_unread:
            start = row.read + 1
        else:
            start = 1
        start = max(start, row.deleted + 1, row.cleared + 1)
        recents: list[dict[str, Any]] = []
        if msg_count and top >= start:
            lo = max(start, top - msg_count + 1)
            records = store.messages(ctype, cid, lo, top + 1, msg_count)
            recents = message_reads.present(store, records, uid) if records else []
        out.append(
            {
                "channel_id": cid,
                "channel_type": ctype,
                "unread": unread,
                "mention": 1 if conversations.mentioned(store, uid, row, ck, top, now_ms) else 0,
                "timestamp": last_ms // 1000,
                "timestamp_ms": last_ms,
                "last_msg_seq": top,
                "last_client_msg_no": last.client_msg_no if last is not None else "",
                "readed_to_msg_seq": row.read,
                "version": row_version,
                "recents": recents,
            }
        )
    return out


QUERIES: dict[str, Callable[[Store, dict[str, Any]], Any]] = {
    "conversation_row": _row_query,
    "conversations": _conversations,
}
