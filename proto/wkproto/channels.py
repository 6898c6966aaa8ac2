"""WuKongIM's rule for the id of a one-to-one (person) channel: one id for both parties, which
servers, clients and tools must compute alike."""

from __future__ import annotations

import zlib


def person_channel_id(uid_a: str, uid_b: str) -> str:
    """The canonical id of the one-to-one channel of two uids: ``larger@smaller`` by crc32.

    Equal hashes are broken lexically (larger string first), so the id is symmetric.
    """
    ha, hb = zlib.crc32(uid_a.encode()), zlib.crc32(uid_b.encode())
    if ha > hb or (ha == hb and uid_a > uid_b):
        return f"{uid_a}@{uid_b}"
    return f"{uid_b}@{uid_a}"


def person_parties(channel_id: str) -> tuple[str, str]:
    a, sep, b = channel_id.partition("@")
    if not sep or not a or not b:
        raise ValueError(f"not a person channel id: {channel_id!r}")
    return a, b
