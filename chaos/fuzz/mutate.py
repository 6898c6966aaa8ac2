"""Generic byte mutators, in the manner of AFL's havoc stage: pure functions of the input and a
``random.Random``, so that a seed replays the same mutations.

Structure-aware generators (``wk``, ``ws``, ``http``, ``grpc``) build inputs that get past the
first parser check; these mutators then damage them where no structure is known.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

INTERESTING_8 = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x10, 0x20, 0x40)
INTERESTING_16 = (0x0000, 0x0001, 0x007F, 0x0080, 0x00FF, 0x0100, 0x7FFF, 0x8000, 0xFFFF)
INTERESTING_32 = (
    0x00000000,
    0x00000001,
    0x0000FFFF,
    0x00010000,
    0x00100000,
    0x00100001,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
)
INTERESTING_64 = (
    0,
    1,
    (1 << 31) - 1,
    1 << 32,
    (1 << 53) + 1,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
)

MAX_GROWTH = 4096
"""A mutation adds at most this many bytes: size is the generators' business (they make the
oversized inputs on purpose, with the declared lengths that go with them)."""


def flip_bit(data: bytearray, rng: random.Random) -> None:
    if data:
        i = rng.randrange(len(data) * 8)
        data[i >> 3] ^= 1 << (i & 7)


def set_interesting_byte(data: bytearray, rng: random.Random) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.choice(INTERESTING_8)


def random_byte(data: bytearray, rng: random.Random) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.randrange(256)


def overwrite_int(data: bytearray, rng: random.Random) -> None:
    """An interesting 16/32/64-bit value, either endianness, at a random offset."""
    width = rng.choice((2, 4, 8))
    if len(data) < width:
        return
    pool = {2: INTERESTING_16, 4: INTERESTING_32, 8: INTERESTING_64}[width]
    value = rng.choice(pool) & ((1 << (8 * width)) - 1)
    i = rng.randrange(len(data) - width + 1)
    data[i : i + width] = value.to_bytes(width, rng.choice(("big", "little")))


def arith(data: bytearray, rng: random.Random) -> None:
    """Add or subtract a small number from one byte (off-by-one lengths and counts)."""
    if data:
        i = rng.randrange(len(data))
        data[i] = (data[i] + rng.choice((-3, -2, -1, 1, 2, 3, 16, -16))) & 0xFF


def insert_bytes(data: bytearray, rng: random.Random) -> None:
    n = rng.choice((1, 1, 2, 4, 8, 64, 512))
    i = rng.randrange(len(data) + 1)
    fill = rng.randbytes(n) if rng.random() < 0.5 else bytes([rng.choice(INTERESTING_8)]) * n
    data[i:i] = fill


def delete_range(data: bytearray, rng: random.Random) -> None:
    if len(data) > 1:
        i = rng.randrange(len(data))
        n = rng.randint(1, max(1, min(len(data) - i, rng.choice((1, 2, 4, 16, 256)))))
        del data[i : i + n]


def duplicate_range(data: bytearray, rng: random.Random) -> None:
    if data:
        i = rng.randrange(len(data))
        n = rng.randint(1, min(len(data) - i, 256))
        chunk = bytes(data[i : i + n])
        j = rng.randrange(len(data) + 1)
        data[j:j] = chunk * rng.choice((1, 1, 2, 8))


def truncate(data: bytearray, rng: random.Random) -> None:
    if data:
        del data[rng.randrange(len(data)) :]


MUTATORS: tuple[Callable[[bytearray, random.Random], None], ...] = (
    flip_bit,
    flip_bit,
    set_interesting_byte,
    random_byte,
    overwrite_int,
    arith,
    insert_bytes,
    delete_range,
    duplicate_range,
    truncate,
)


def mutate(data: bytes, rng: random.Random, rounds: int | None = None) -> bytes:
    """``data`` with 1-4 stacked random mutations (``rounds`` to fix the number)."""
    out = bytearray(data)
    limit = len(data) + MAX_GROWTH
    for _ in range(rounds if rounds is not None else rng.choice((1, 1, 1, 2, 2, 3, 4))):
        rng.choice(MUTATORS)(out, rng)
        if len(out) > limit:
            del out[limit:]
    return bytes(out)


def splice(a: bytes, b: bytes, rng: random.Random) -> bytes:
    """The head of ``a`` joined to the tail of ``b``."""
    return a[: rng.randint(0, len(a))] + b[rng.randint(0, len(b)) :]


def garbage(rng: random.Random, max_len: int = 256) -> bytes:
    """Random bytes of a random length (0 included), sometimes one repeated byte."""
    n = rng.choice((0, 1, 2, 3, 7, 16, rng.randint(0, max_len), max_len))
    if rng.random() < 0.2:
        return bytes([rng.choice(INTERESTING_8)]) * n
    return rng.randbytes(n)


def pick(rng: random.Random, choices: Sequence[tuple[float, str]]) -> str:
    """A weighted choice among ``(weight, name)`` pairs."""
    total = sum(w for w, _ in choices)
    x = rng.random() * total
    for w, name in choices:
        x -= w
        if x < 0:
            return name
    return choices[-1][1]
