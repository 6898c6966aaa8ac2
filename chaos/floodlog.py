"""The ``flood`` workload's compact history: fixed-size binary rows for send attempts and
columnar blocks for final reads, in ``results/<run>/flood/``.

The ``chat`` workload writes one JSON line per event (:mod:`chaos.history`). A flood run makes
a million sends and reads every one of them back from every node: as JSON lines that would be
gigabytes to write and minutes of parsing before the first check. So the flood keeps its own,
with the same meaning:

``sends-w<worker>.bin``
    one :data:`ATTEMPT` row (46 bytes) per send attempt, written when its outcome is known:
    sender, message number, channel, attempt, outcome (``ok``/``fail``/``info``, as in the
    JSON history, an interrupted attempt being ``info``), the node it went to, the SENDACK's
    reason code, the acked seq and
    message id (0 when not acked), and the monotonic times of the SEND and of its outcome.
    An attempt is one row, not an invoke/completion pair: the worker writes the row of every
    attempt it started before it exits, interrupted ones included.

``recv-w<worker>.json``
    what the worker saw of RECVs: counts, order violations per session and channel (with
    examples) and a 1 % sample of RECVs (channel, seq, message key, message id) that the
    checker compares with the final reads.

``final-n<node>.bin``
    one block per channel read from that node: a JSON header line (node, channel, complete,
    count, phantom examples) and the columns ``seq``, ``key``, ``message_id`` and
    ``payload_ok``, as raw little-endian arrays.

A message is named by its key ``sender << 32 | number``; on the wire its ``from_uid`` is
``fl<sender>`` and its ``client_msg_no`` ``fl<sender>-<number>`` (:func:`client_msg_no`), and
its payload is a function of the two (:func:`payload`), so a read can verify it without the
history carrying payloads.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

ATTEMPT = struct.Struct("<IIHBBBBqqdd")
"""sender, number, channel, attempt, outcome, node, reason, seq, message_id, t_send, t_done."""

OUTCOMES = ("ok", "fail", "info")
OK, FAIL, INFO = 0, 1, 2

PHANTOM = (1 << 64) - 1
"""The key of a stored message whose sender or ``client_msg_no`` is not one the flood makes."""

COLUMNS = (("seq", "q"), ("key", "Q"), ("message_id", "q"), ("payload_ok", "B"))


def message_key(sender: int, number: int) -> int:
    return sender << 32 | number


def split_key(key: int) -> tuple[int, int]:
    return key >> 32, key & 0xFFFFFFFF


def uid_of(sender: int) -> str:
    return f"fl{sender}"


def client_msg_no(sender: int, number: int) -> str:
    return f"fl{sender}-{number}"


def payload(sender: int, number: int, size: int) -> bytes:
    """The payload of message (sender, number): its name, padded to ``size`` bytes."""
    head = f"{sender}-{number}|".encode()
    return head + b"x" * max(0, size - len(head))


def parse_key(from_uid: str, cmn: str) -> int:
    """The key of a stored message, or :data:`PHANTOM` if the flood never made that name."""
    if not cmn.startswith("fl") or "-" not in cmn:
        return PHANTOM
    sender_s, _, number_s = cmn[2:].partition("-")
    if not (sender_s.isdigit() and number_s.isdigit()) or from_uid != f"fl{sender_s}":
        return PHANTOM
    sender, number = int(sender_s), int(number_s)
    if sender >= 1 << 32 or number >= 1 << 32:
        return PHANTOM
    return message_key(sender, number)


# --- attempts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    sender: int
    number: int
    channel: int
    attempt: int
    outcome: int
    node: int = 0
    reason: int = 0
    """The SENDACK's reason code; 0 when there was none (timeout, lost session)."""
    seq: int = 0
    message_id: int = 0
    t_send: float = 0.0
    t_done: float = 0.0

    @property
    def key(self) -> int:
        return message_key(self.sender, self.number)

    def pack(self) -> bytes:
        return ATTEMPT.pack(
            self.sender,
            self.number,
            self.channel,
            self.attempt,
            self.outcome,
            self.node,
            self.reason,
            self.seq,
            self.message_id,
            self.t_send,
            self.t_done,
        )


def read_attempts(path: Path) -> Iterator[Attempt]:
    """Every whole row of an attempts file (a torn last row, from a worker that died
    mid-write, is left out)."""
    data = path.read_bytes()
    whole = len(data) - len(data) % ATTEMPT.size
    for row in ATTEMPT.iter_unpack(memoryview(data)[:whole]):
        yield Attempt(*row)


# --- final reads ----------------------------------------------------------------------------


@dataclass(slots=True)
class FinalRead:
    """One channel read in full from one node, as columns."""

    node: int
    channel: int
    complete: bool = False
    seq: array[int] = field(default_factory=lambda: array("q"))
    key: array[int] = field(default_factory=lambda: array("Q"))
    message_id: array[int] = field(default_factory=lambda: array("q"))
    payload_ok: array[int] = field(default_factory=lambda: array("B"))
    phantoms: list[dict[str, Any]] = field(default_factory=list)
    """A few stored messages whose name the flood never made, as the server returned them."""

    def add(self, seq: int, key: int, message_id: int, ok: bool) -> None:
        self.seq.append(seq)
        self.key.append(key)
        self.message_id.append(message_id)
        self.payload_ok.append(1 if ok else 0)

    def __len__(self) -> int:
        return len(self.seq)

    def same_log(self, other: FinalRead) -> bool:
        return (
            self.seq == other.seq
            and self.key == other.key
            and self.message_id == other.message_id
            and self.payload_ok == other.payload_ok
        )


def _raw(a: array[int]) -> bytes:
    if sys.byteorder != "little":
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def write_final_read(fh: BinaryIO, read: FinalRead) -> None:
    header = {
        "node": read.node,
        "channel": read.channel,
        "complete": read.complete,
        "count": len(read),
        "phantoms": read.phantoms[:10],
    }
    fh.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
    for name, _ in COLUMNS:
        fh.write(_raw(getattr(read, name)))


def read_final_reads(path: Path) -> Iterator[FinalRead]:
    with path.open("rb") as fh:
        while line := fh.readline():
            header = json.loads(line)
            count = int(header["count"])
            read = FinalRead(
                node=int(header["node"]),
                channel=int(header["channel"]),
                complete=bool(header["complete"]),
                phantoms=list(header.get("phantoms", [])),
            )
            for name, code in COLUMNS:
                column: array[int] = array(code)
                raw = fh.read(column.itemsize * count)
                if len(raw) != column.itemsize * count:
                    raise ValueError(f"{path}: a torn block (channel {read.channel})")
                column.frombytes(raw)
                if sys.byteorder != "little":
                    column.byteswap()
                setattr(read, name, column)
            yield read
