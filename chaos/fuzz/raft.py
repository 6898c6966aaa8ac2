"""Target ``raft``: the Raft ports (``cluster.raft_port + g`` for the controller, g = 0, and every
slot group). One frame = one length-prefixed message (or one chunk of unframed bytes).

pysyncobj frames a message as a 4-byte native-endian *signed* length and the bytes; raftchat's
frame inside is ``version | timestamp | key id | nonce | AES-GCM ciphertext | tag``
(cluster/raft/wire.py). The fuzzer does not use the cluster password: every tag it writes is
wrong, so nothing it sends may ever reach ``pickle.loads``. What is exercised is everything
before that: lengths of every size (0, shorter than a tag, 1 MiB, 2 GiB - 1, negative), a
large declaration followed by a stream of bytes, unframed garbage, half-open and reset
connections, trickles, and floods of connections.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Generator

from .context import FuzzContext
from .mutate import garbage, pick
from .scenario import Action, Flood, HalfClose, Read, Received, Reset, Scenario, Sleep, Write
from .wk import trickle

_LEN = struct.Struct("<i")
HEAD_LEN = 1 + 8 + 16 + 12  # version, timestamp, key id, nonce
MAC_LEN = 16  # the AES-GCM tag
STREAM_CHUNK = 64 * 1024

DECLARED = (0, 1, 8, 52, 53, 54, 1024, 65536, 1 << 20, 1 << 24, 1 << 30, (1 << 31) - 1)
"""Declared lengths: empty, shorter than a frame's head and tag, around it, up to 2 GiB - 1."""

KINDS = (
    (50, "frames"),
    (15, "garbage"),
    (10, "big_declaration"),
    (10, "half_open"),
    (8, "many_connections"),
    (4, "negative"),
    (3, "slow"),
)


def length_prefix(n: int) -> bytes:
    """pysyncobj's prefix: ``struct.pack('i', n)`` on a little-endian machine (n may wrap to a
    negative number, which it also reads as one)."""
    n &= 0xFFFFFFFF
    return _LEN.pack(n - (1 << 32) if n >= 1 << 31 else n)


def wrong_mac_frame(rng: random.Random) -> bytes:
    """A well-formed raftchat Raft frame with a tag no key made (or another version: 1 is the
    older HMAC framing)."""
    version = 2 if rng.random() < 0.8 else rng.choice((0, 1, 3, 255))
    stamp = int(time.monotonic()) if rng.random() < 0.7 else rng.getrandbits(64)
    body = rng.choice((b"", b"\x80\x04N.", b"\x80\x04\x95" + rng.randbytes(16), garbage(rng, 512)))
    head = bytes([version]) + stamp.to_bytes(8, "big") + rng.randbytes(HEAD_LEN - 9)
    data = head + body + rng.randbytes(MAC_LEN)
    return length_prefix(len(data)) + data


def odd_frame(rng: random.Random) -> bytes:
    """A prefix whose length disagrees with what follows, or a frame too short for a tag."""
    kind = rng.randrange(3)
    if kind == 0:
        n = rng.randint(0, HEAD_LEN + MAC_LEN)
        return length_prefix(n) + rng.randbytes(n)
    if kind == 1:
        return length_prefix(rng.choice(DECLARED[:6])) + garbage(rng, 64)
    return length_prefix(0)


def make(ctx: FuzzContext, rng: random.Random) -> Scenario:
    node = rng.choice(ctx.nodes)
    port = ctx.raft_port + rng.randrange(ctx.raft_groups + 1)
    kind = pick(rng, KINDS)
    return Scenario("raft", kind, node, port, _KINDS[kind](rng), max_s=10.0)


Steps = Generator[Action, Received | None, None]


def _frames(rng: random.Random) -> Steps:
    n = rng.choice((1, 5, 30, 100))
    frames = [wrong_mac_frame(rng) if rng.random() < 0.7 else odd_frame(rng) for _ in range(n)]
    yield Write(b"".join(frames), n)
    yield Read(0.1)


def _garbage(rng: random.Random) -> Steps:
    chunks = [garbage(rng, 4096) for _ in range(rng.choice((1, 4, 16)))]
    yield Write(b"".join(chunks), len(chunks))
    yield Read(0.1)


def _big_declaration(rng: random.Random) -> Steps:
    declared = rng.choice(DECLARED[6:])
    yield Write(length_prefix(declared) + rng.randbytes(HEAD_LEN))
    # A declaration followed by a stream: the receiver buffers it; 16 MiB is rare and slow.
    stream = rng.choice(
        (0, 0, STREAM_CHUNK, 1 << 20, 4 << 20, 0, 0, STREAM_CHUNK, 1 << 20, 16 << 20)
    )
    chunk = rng.randbytes(STREAM_CHUNK)
    sent = 0
    while sent < min(stream, declared):
        yield Write(chunk, 0)
        sent += len(chunk)
    yield Sleep(rng.choice((0.1, 0.5, 2.0)))
    if rng.random() < 0.3:
        yield Reset()


def _half_open(rng: random.Random) -> Steps:
    data = wrong_mac_frame(rng)
    yield Write(data[: rng.randrange(1, len(data))])
    if rng.random() < 0.5:
        yield HalfClose()
    yield Sleep(rng.choice((0.1, 0.5, 2.0)))
    if rng.random() < 0.5:
        yield Reset()


def _many_connections(rng: random.Random) -> Steps:
    data = rng.choice((b"", wrong_mac_frame(rng), length_prefix(1 << 20)))
    yield Flood(rng.choice((20, 100, 250)), data)
    yield Sleep(rng.choice((0.2, 0.5, 1.5)))


def _negative(rng: random.Random) -> Steps:
    n = rng.choice((-1, -8, -(1 << 31)))
    yield Write(_LEN.pack(n) + rng.randbytes(rng.choice((0, 8, 64))))
    yield Read(0.2)


def _slow(rng: random.Random) -> Steps:
    yield from trickle(wrong_mac_frame(rng), rng, max_s=3.0)


_KINDS = {
    "frames": _frames,
    "garbage": _garbage,
    "big_declaration": _big_declaration,
    "half_open": _half_open,
    "many_connections": _many_connections,
    "negative": _negative,
    "slow": _slow,
}
