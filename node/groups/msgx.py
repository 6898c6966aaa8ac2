"""Key layout of the message extras in column family ``msgx`` (this module's prefixes only).

``ck`` is ``keys.channel_key``; seqs are big-endian so a prefix scan walks them in order.

- ``R ck seq``            -> JSON {"revoker", "at"}: the message is revoked (a tombstone)
- ``E ck seq``            -> JSON {"version", "edited_at", "payload" (base64), "editor"}
- ``H ck seq uid``        -> b"": hidden from ``uid`` only (delete for one user)
- ``C ck seq uid``        -> b"": ``uid`` read the message (read receipts)
- ``T 0x00 ck``           -> JSON {"days", "channel_id", "channel_type"}: the channel's retention
- ``T 0x01 deadline ck seq`` -> JSON {"channel_id", "channel_type"}: expiry index, by deadline
- ``T 0x02 ck``           -> seq: everything at or below it is deleted (the floor)
- ``T 0x03 ck``           -> JSON {"channel_id", "channel_type"}: a range deletion not finished

``I`` belongs to another module (the message-id index) and is not touched here.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from ..storage import Store, keys

CF = "msgx"
REVOKE = b"R"
EDIT = b"E"
HIDE = b"H"
RECEIPT = b"C"
RETENTION = b"T\x00"
EXPIRY = b"T\x01"
FLOOR = b"T\x02"
PENDING = b"T\x03"

_DEADLINE = struct.Struct(">Q")


def seq_key(prefix: bytes, ck: bytes, seq: int) -> bytes:
    return prefix + ck + keys.pack_seq(seq)


def user_key(prefix: bytes, ck: bytes, seq: int, uid: str) -> bytes:
    return seq_key(prefix, ck, seq) + uid.encode()


def expiry_key(deadline_ms: int, ck: bytes, seq: int) -> bytes:
    return EXPIRY + _DEADLINE.pack(max(deadline_ms, 0)) + ck + keys.pack_seq(seq)


def parse_expiry_key(key: bytes) -> tuple[int, bytes, int]:
    """(deadline in ms, channel key, seq) of an expiry index key."""
    at = len(EXPIRY)
    deadline = int(_DEADLINE.unpack_from(key, at)[0])
    ck = key[at + 8 : at + 8 + keys.CHANNEL_KEY_LEN]
    seq = keys.unpack_seq(key[at + 8 + keys.CHANNEL_KEY_LEN :])
    return deadline, ck, seq


def get_json(store: Store, key: bytes) -> Any:
    raw = store.get_raw(CF, key)
    return None if raw is None else json.loads(raw)


def dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def floor(store: Store, ck: bytes) -> int:
    """The seq at or below which the channel's messages are deleted (0: none)."""
    raw = store.get_raw(CF, FLOOR + ck)
    return 0 if raw is None else keys.unpack_seq(raw)


def users_of(store: Store, prefix: bytes, ck: bytes, seq: int) -> list[str]:
    """The uids recorded under ``prefix ck seq`` (readers, or users who hid the message)."""
    base = seq_key(prefix, ck, seq)
    return [k[len(base) :].decode() for k, _ in store.prefix_items(CF, base)]
