"""What every checker shares: the result type, bounded examples, and one index of the history
(sends by key, every observation of a stored message) built once per history."""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from chaos.history import (
    DEFINITE_FAIL_REASONS,
    Event,
    History,
    Op,
    Outcome,
    ReadValue,
    RecvValue,
    SendValue,
)

MAX_EXAMPLES = 10

SendKey = tuple[str, str, str]
"""The server's dedupe key: (channel, from_uid, client_msg_no)."""

HistoryLike = History | Sequence[Event]


CheckStatus = Literal["valid", "invalid", "no data"]


@dataclass(slots=True)
class CheckResult:
    """One property's verdict. ``counts`` are totals; ``examples`` at most ``MAX_EXAMPLES``
    dicts, each with a ``kind``; ``details`` holds measurements too big for counts
    (availability's per-window tables).

    ``valid`` means "nothing was found broken". ``no_data`` says the history held nothing this
    property could be checked on (no floor observations, no acked send, ...): then ``valid`` is
    vacuous and ``status`` is "no data", never "valid"."""

    name: str
    valid: bool
    counts: dict[str, int | float | None] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    no_data: bool = False

    @property
    def status(self) -> CheckStatus:
        if not self.valid:
            return "invalid"
        return "no data" if self.no_data else "valid"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "valid": self.valid,
            "status": self.status,
            "counts": {k: _json_number(v) for k, v in self.counts.items()},
            "examples": self.examples,
        }
        if self.details:
            out["details"] = self.details
        return out


def _json_number(v: int | float | None) -> int | float | None:
    # json.dumps writes inf as the non-JSON token Infinity; a report must stay parseable.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class Examples:
    """Collects examples per kind and hands back at most ``limit``, taking kinds in turn, so a
    flood of one anomaly cannot hide the single instance of another."""

    def __init__(self, limit: int = MAX_EXAMPLES) -> None:
        self.limit = limit
        self.counts: Counter[str] = Counter()
        self._kept: dict[str, list[dict[str, Any]]] = {}

    def add(self, kind: str, **fields: Any) -> None:
        self.counts[kind] += 1
        kept = self._kept.setdefault(kind, [])
        if len(kept) < self.limit:
            kept.append({"kind": kind, **fields})

    def __bool__(self) -> bool:
        return bool(self.counts)

    def take(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        queues = [list(v) for v in self._kept.values()]
        depth = 0
        while len(out) < self.limit and any(depth < len(q) for q in queues):
            for q in queues:
                if depth < len(q) and len(out) < self.limit:
                    out.append(q[depth])
            depth += 1
        return out


def send_outcome(op: Op) -> Outcome:
    """The outcome a checker may rely on. A ``fail`` whose reason code does not prove the send
    was rejected before proposing (10/17/18 "retry", 15, unknown codes) is read as ``info``:
    a workload that records those as failures must not produce false aborted-read alarms."""
    value = op.value
    assert isinstance(value, SendValue)
    if op.type == "fail" and value.reason is not None and value.reason not in DEFINITE_FAIL_REASONS:
        return "info"
    return op.type


def op_ref(op: Op) -> dict[str, Any]:
    """How examples point back into the history."""
    return {
        "f": op.f,
        "process": op.process,
        "op": op.op,
        "node": op.node,
        "index": op.index,
        "mono": op.invoke_mono,
    }


@dataclass(frozen=True, slots=True)
class Observation:
    """One claim that a stored message sits at (channel, seq): from a SENDACK, a read or a
    RECV. ``None`` fields were not visible to that observer."""

    channel: str
    seq: int
    message_id: int | None
    from_uid: str
    client_msg_no: str
    payload_hash: str | None
    source: str
    """"ack", "read", "final_read" or "recv"."""
    op: Op

    @property
    def key(self) -> SendKey:
        return (self.channel, self.from_uid, self.client_msg_no)

    def ref(self) -> dict[str, Any]:
        return {"source": self.source, **op_ref(self.op)}


@dataclass(slots=True)
class Send:
    op: Op
    value: SendValue
    channel: str
    outcome: Outcome

    @property
    def key(self) -> SendKey:
        return (self.channel, self.value.from_uid, self.value.client_msg_no)


@dataclass(slots=True)
class Read:
    op: Op
    value: ReadValue
    channel: str
    final: bool
    by_key: dict[tuple[str, str], set[int]]
    """(from_uid, client_msg_no) -> seqs at which this read returned it."""


@dataclass(slots=True)
class Index:
    sends: list[Send]
    reads: list[Read]
    recvs: list[tuple[Op, RecvValue, str]]
    observations: list[Observation]
    outcomes: dict[SendKey, set[Outcome]]
    """Every attempt's outcome, per dedupe key."""


_cache: weakref.WeakKeyDictionary[History, Index] = weakref.WeakKeyDictionary()


def index_of(history: HistoryLike) -> tuple[History, Index]:
    h = History.of(history)
    found = _cache.get(h)
    if found is None:
        found = _build(h)
        _cache[h] = found
    return h, found


def _build(h: History) -> Index:
    sends: list[Send] = []
    outcomes: dict[SendKey, set[Outcome]] = {}
    observations: list[Observation] = []
    for op in h.ops_of("send"):
        value = op.value
        assert isinstance(value, SendValue)
        if op.channel is None:
            continue
        send = Send(op, value, op.channel, send_outcome(op))
        sends.append(send)
        outcomes.setdefault(send.key, set()).add(send.outcome)
        if send.outcome == "ok" and value.message_seq is not None:
            observations.append(
                Observation(
                    op.channel,
                    value.message_seq,
                    value.message_id,
                    value.from_uid,
                    value.client_msg_no,
                    value.payload_hash,
                    "ack",
                    op,
                )
            )
    reads: list[Read] = []
    for op in h.ops_of("read", "final_read"):
        rv = op.value
        assert isinstance(rv, ReadValue)
        if op.type != "ok" or op.channel is None:
            continue
        by_key: dict[tuple[str, str], set[int]] = {}
        for m in rv.messages:
            by_key.setdefault((m.from_uid, m.client_msg_no), set()).add(m.seq)
            observations.append(
                Observation(
                    op.channel,
                    m.seq,
                    m.message_id,
                    m.from_uid,
                    m.client_msg_no,
                    m.payload_hash,
                    op.f,
                    op,
                )
            )
        reads.append(Read(op, rv, op.channel, op.f == "final_read", by_key))
    recvs: list[tuple[Op, RecvValue, str]] = []
    for op in h.ops_of("recv"):
        cv = op.value
        assert isinstance(cv, RecvValue)
        if op.type != "ok" or op.channel is None:
            continue
        recvs.append((op, cv, op.channel))
        observations.append(
            Observation(
                op.channel,
                cv.seq,
                cv.message_id,
                cv.from_uid,
                cv.client_msg_no,
                cv.payload_hash,
                "recv",
                op,
            )
        )
    return Index(sends, reads, recvs, observations, outcomes)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]
