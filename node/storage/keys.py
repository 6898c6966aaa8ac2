"""Key layouts. Integers are big-endian so that RocksDB byte order is numeric order.

``channel_key`` is a fixed-width 8-byte hash of (type, id); the full id is kept inside the
records, and the channel row is checked on write so that a hash collision is detected.
"""

from __future__ import annotations

import functools
import hashlib
import struct

_SEQ = struct.Struct(">Q")
CHANNEL_KEY_LEN = 8
SEP = b"\x00"


@functools.lru_cache(maxsize=65_536)
def channel_key(channel_type: int, channel_id: str) -> bytes:
    # Cached: apply computes it several times per message (message, index, counters, rows).
    h = hashlib.blake2b(f"{channel_type}:{channel_id}".encode(), digest_size=CHANNEL_KEY_LEN)
    return h.digest()


def message_key(ck: bytes, seq: int) -> bytes:
    return ck + _SEQ.pack(seq)


def seq_of_message_key(key: bytes) -> int:
    return int(_SEQ.unpack_from(key, CHANNEL_KEY_LEN)[0])


def subscriber_key(ck: bytes, uid: str) -> bytes:
    return ck + uid.encode()


def dedupe_key(ck: bytes, from_uid: str, client_msg_no: str) -> bytes:
    # uids cannot contain NUL (they are validated), so the separator is unambiguous.
    return ck + from_uid.encode() + SEP + client_msg_no.encode()


def device_key(uid: str, device_flag: int) -> bytes:
    return uid.encode() + SEP + bytes([device_flag & 0xFF])


def pack_seq(seq: int) -> bytes:
    return _SEQ.pack(seq)


def unpack_seq(data: bytes) -> int:
    return int(_SEQ.unpack(data)[0])
