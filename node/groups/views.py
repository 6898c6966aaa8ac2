"""How stored messages look and where they are: the helpers that apply and reads share.

A leaf of the slot group's domain modules: it imports none of them but the key layouts
(``msgx``, ``msgindex``), so the apply modules (``message_ops``, ``streams``, ``conversations``)
and the read modules (``message_reads``, ``conversation_reads``, ``command_sync``'s query) can
all use it without importing one another. Nothing here reads a clock: a caller in apply passes
``ctx.time_ms``, a read passes its own.
"""

from __future__ import annotations

import base64
from typing import Any

from proto.wkproto import ChannelType

from ..channels import person_parties
from ..storage import MessageRecord, Store, keys
from . import msgindex, msgx


def message_json(r: MessageRecord) -> dict[str, Any]:
    """A stored message as the JSON document reads answer with (before ``present``)."""
    return {
        "message_id": r.message_id,
        "message_seq": r.message_seq,
        "timestamp_ms": r.timestamp_ms,
        "channel_id": r.channel_id,
        "channel_type": r.channel_type,
        "from_uid": r.from_uid,
        "client_msg_no": r.client_msg_no,
        "payload": base64.b64encode(r.payload).decode(),
        "setting": r.setting,
        "flags": r.flags,
        "expire": r.expire,
        "topic": r.topic,
        "stream_no": r.stream_no,
    }


def is_expired(r: MessageRecord, now_ms: int) -> bool:
    return bool(r.expire) and r.timestamp_ms + r.expire * 1000 <= now_ms


def is_gone(store: Store, r: MessageRecord, now_ms: int) -> bool:
    """Expired, or below its channel's deletion floor: no longer there for anyone."""
    ck = keys.channel_key(r.channel_type, r.channel_id)
    return is_expired(r, now_ms) or r.message_seq <= msgx.floor(store, ck)


def find_by_id(
    store: Store, channel_type: int, channel_id: str, message_id: int
) -> MessageRecord | None:
    """The message with this id in this channel, through the id index (``msgindex``)."""
    found = msgindex.locate(store, message_id)
    if found is None or found[:2] != (channel_type, channel_id):
        return None
    return store.get_message(channel_type, channel_id, found[2])


def parties(store: Store, channel_type: int, channel_id: str) -> list[str]:
    """Everyone a message of the channel is for: the two uids of a person channel, otherwise
    the subscribers."""
    if channel_type == ChannelType.PERSON:
        a, b = person_parties(channel_id)
        return [a] if a == b else [a, b]
    return store.subscribers(channel_type, channel_id)
