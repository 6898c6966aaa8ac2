"""A replica's fingerprint of its slot group: per channel, the head seq and a hash of its log.

``GET /cluster/digest`` serves it so that the replicas of a group can be compared (the chaos
suite's split-brain check): it reads this replica's store as it is, with no read barrier and no
forwarding, so a lagging follower shows a shorter log rather than the leader's.

The hash of a channel is sha256 over its messages in seq order, each encoded as its seq and
message id (big-endian, 8 bytes each), then from_uid, client_msg_no and payload, each as a
4-byte big-endian length and the bytes (strings in UTF-8; from_uid as stored, so HTTP sends
without a sender carry ``____system``); the first ``HASH_HEX_DIGITS`` hex digits of it.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from ..storage import MessageRecord, Store

HASH_HEX_DIGITS = 32
_IDS = struct.Struct(">Qq")
_LEN = struct.Struct(">I")


def message_bytes(r: MessageRecord) -> bytes:
    """The canonical encoding of one message inside a channel hash."""
    parts = [_IDS.pack(r.message_seq, r.message_id)]
    for raw in (r.from_uid.encode(), r.client_msg_no.encode(), r.payload):
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def channel_name(channel_type: int, channel_id: str) -> str:
    """``"<type>:<id>"``, with the id as stored (person channels under their ``a@b`` id)."""
    return f"{channel_type}:{channel_id}"


def channel_digests(store: Store) -> tuple[int, dict[str, list[Any]]]:
    """(applied index, ``{channel: [head seq, hash]}``) of every channel holding a message, both
    from one consistent scan of the store. Blocking: run it in a worker thread."""
    heads: dict[str, int] = {}
    hashes: dict[str, Any] = {}

    def visit(r: MessageRecord) -> None:
        name = channel_name(r.channel_type, r.channel_id)
        if name not in hashes:
            hashes[name] = hashlib.sha256()
        heads[name] = r.message_seq  # the scan goes up by seq: the last one is the head
        hashes[name].update(message_bytes(r))

    applied = store.scan_messages(visit)
    return applied, {
        name: [heads[name], h.hexdigest()[:HASH_HEX_DIGITS]] for name, h in hashes.items()
    }
