"""Reads of a slot group's state, as JSON documents so that they can cross nodes.

The leader runs them after a read barrier (see ``LocalGroup.read_barrier``); the query names are
the ``q`` member of the document.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..storage import Store
from . import channel_state, command_sync, conversation_reads, message_reads, streams

MAX_SYNC_LIMIT = 10_000


class QueryError(ValueError):
    """A query document that names no query or misses an argument."""


def run_query(store: Store, q: dict[str, Any]) -> Any:
    try:
        kind = q["q"]
        if kind == "auth":
            # What CONNECT needs in one barrier: the device token and whether the user is banned.
            uid = q["uid"]
            dev = store.get_device(uid, int(q["device_flag"]))
            own = store.get_channel(1, uid)
            # The stored record goes to the gateway node as it is (a hash, usertokens.py):
            # that node checks the presented token, which never leaves it.
            return {
                "device": None if dev is None else dev.to_json(),
                "ban": bool(own is not None and own.ban),
            }
        if kind == "device":
            dev = store.get_device(q["uid"], int(q["device_flag"]))
            return None if dev is None else {"device_level": dev.device_level}
        if kind == "channel":
            info = store.get_channel(int(q["channel_type"]), q["channel_id"])
            return None if info is None else asdict(info)
        if kind == "subscribers":
            return store.subscribers(int(q["channel_type"]), q["channel_id"])
        if kind == "head":
            return store.head_seq(int(q["channel_type"]), q["channel_id"])
        if kind == "messages":
            return _messages(store, q)
        domain = _DOMAIN_QUERIES.get(kind)
        if domain is not None:
            return domain(store, q)
    except (KeyError, TypeError, ValueError) as e:
        raise QueryError(f"bad query {q!r}: {e}") from None
    raise QueryError(f"unknown query {q.get('q')!r}")


def _messages(store: Store, q: dict[str, Any]) -> dict[str, Any]:
    """Sync by seq, as ``/channel/messagesync``: ``pull_mode`` 0 walks down (older) from
    ``start_message_seq``, 1 walks up (newer) including start and excluding end; both seqs 0
    means the newest ``limit`` messages. Results are in ascending seq order."""
    ctype, cid = int(q["channel_type"]), q["channel_id"]
    start, end = int(q.get("start_message_seq", 0)), int(q.get("end_message_seq", 0))
    limit = max(1, min(int(q.get("limit", 100)), MAX_SYNC_LIMIT))
    pull_up = int(q.get("pull_mode", 0)) == 1
    head = store.head_seq(ctype, cid)
    if start == 0 and end == 0:
        lo = max(head - limit + 1, 1)
        records = store.messages(ctype, cid, lo, head + 1, limit)
        more = lo > 1
    elif pull_up:
        hi = end if end else head + 1
        records = store.messages(ctype, cid, max(start, 1), hi, limit + 1)
        more = len(records) > limit
        records = records[:limit]
    else:
        top = start if start else head
        floor = end + 1 if end else 1
        lo = max(top - limit + 1, floor)
        records = store.messages(ctype, cid, lo, top + 1, limit)
        more = lo > floor
    return {
        "head": head,
        "more": 1 if more else 0,
        "messages": message_reads.present(store, records, str(q.get("login_uid", ""))),
    }


_DOMAIN_QUERIES = {
    **channel_state.QUERIES,
    **conversation_reads.QUERIES,
    **message_reads.QUERIES,
    **command_sync.QUERIES,
    **streams.QUERIES,
}
