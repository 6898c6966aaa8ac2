"""The chaos history: every operation a client or the nemesis performs, as JSONL events.

Jepsen's model. A client *invokes* an operation and later completes it with ``ok`` (it happened),
``fail`` (it definitely did not happen) or ``info`` (unknown: a timeout, a lost connection, a
"retry with the same client_msg_no" reason code). Checkers must read ``info`` as "maybe". An
invocation with no completion at all (the history ended first) is also ``info``.

One line per event::

    {"type": "invoke", "f": "send", "process": "c3", "op": 17, "node": 2, "channel": "2:g1",
     "time": 1767000000.25, "mono": 812.5, "value": {"client_msg_no": "c3-17", ...}}

``time`` is wall-clock seconds (for humans and for lining up with node logs), ``mono`` is
``time.monotonic()`` of the recording machine, the only clock the checkers order by. ``op`` is
unique per history; an invoke and its completion share ``(process, op)``. Observations that are
not requests (a RECV pushed to a session, a replica digest) are a lone ``ok`` event.

``channel`` is ``"<channel_type>:<canonical channel_id>"``: person channels use the server's
canonical ``a@b`` id, so that the sender's view and a receiver's view (whose RECV names the
*other* party as channel id) land on the same key. See :func:`channel_key`.

Completion values repeat the invocation's fields (the recorder merges them), so every completion
line can be read on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, cast, get_args

__all__ = [
    "DEFINITE_FAIL_REASONS",
    "INDETERMINATE_REASONS",
    "SEND_SUCCESS",
    "VALUE_TYPES",
    "ChannelDigest",
    "Clock",
    "DigestValue",
    "Event",
    "EventType",
    "FloorValue",
    "History",
    "HistoryError",
    "HistoryWriter",
    "MemoryHistory",
    "NemesisValue",
    "Op",
    "Outcome",
    "PendingOp",
    "RawValue",
    "ReadMessage",
    "ReadValue",
    "Recorder",
    "RecvValue",
    "SendValue",
    "SystemClock",
    "Value",
    "channel_key",
    "classify_send_reason",
    "dump_history",
    "load_history",
    "pair_ops",
    "parse_history",
    "payload_hash",
    "value_type",
]

EventType = Literal["invoke", "ok", "fail", "info"]
Outcome = Literal["ok", "fail", "info"]
EVENT_TYPES: frozenset[str] = frozenset(get_args(EventType))

SEND_SUCCESS = 1

INDETERMINATE_REASONS: frozenset[int] = frozenset({0, 10, 15, 17, 18})
"""SENDACK reasons that do not prove the message was not committed. 10/17/18 are the cluster's
"retry with the same client_msg_no" codes; 15 (the leader's store failed) can follow a Raft
commit on the other replicas; 0 is no answer at all."""

DEFINITE_FAIL_REASONS: frozenset[int] = frozenset(
    {2, 3, 4, 5, 8, 9, 11, 13, 16, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29}
)
"""SENDACK reasons given before anything is proposed: permission, validation, rate limit. Any
code in neither set counts as indeterminate: calling a committed send "failed" would raise
false aborted-read alarms, while calling a failed send "unknown" only weakens one check."""


def classify_send_reason(reason: int) -> Outcome:
    """How a workload should record a SENDACK (or HTTP send) with this reason code."""
    if reason == SEND_SUCCESS:
        return "ok"
    if reason in DEFINITE_FAIL_REASONS:
        return "fail"
    return "info"


def channel_key(channel_type: int, channel_id: str) -> str:
    """The history's channel key. ``channel_id`` must already be canonical (person: ``a@b``)."""
    return f"{channel_type}:{channel_id}"


def payload_hash(payload: bytes) -> str:
    """A short stable digest of a message payload, so histories never carry payload bytes."""
    return hashlib.sha256(payload).hexdigest()[:16]


class HistoryError(ValueError):
    """A history line or event sequence that does not follow the format."""


# --- JSON field access with precise errors ------------------------------------------------------


def _req(d: Mapping[str, Any], key: str) -> Any:
    if key not in d:
        raise HistoryError(f"missing field {key!r}")
    return d[key]


def _as_int(v: Any, key: str) -> int:
    # bool is an int subclass; a JSON true where a seq belongs is a bug in the recorder.
    if isinstance(v, bool) or not isinstance(v, int):
        raise HistoryError(f"field {key!r} must be an integer, got {v!r}")
    return v


def _as_str(v: Any, key: str) -> str:
    if not isinstance(v, str):
        raise HistoryError(f"field {key!r} must be a string, got {v!r}")
    return v


def _as_float(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise HistoryError(f"field {key!r} must be a number, got {v!r}")
    return float(v)


def _int(d: Mapping[str, Any], key: str) -> int:
    return _as_int(_req(d, key), key)


def _str(d: Mapping[str, Any], key: str) -> str:
    return _as_str(_req(d, key), key)


def _opt_int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    return None if v is None else _as_int(v, key)


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    return None if v is None else _as_str(v, key)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    # Optional fields are left out of the line rather than written as null: histories get big.
    return {k: v for k, v in d.items() if v is not None}


# --- values, one class per operation kind -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendValue:
    """A send. Retries of one message are separate ops with the same ``client_msg_no``."""

    client_msg_no: str
    from_uid: str
    payload_hash: str
    message_id: int | None = None
    message_seq: int | None = None
    reason: int | None = None
    error: str | None = None
    """Why the outcome is unknown or failed when there is no reason code: "timeout", "closed",
    "http 500"..."""
    attempt: int = 1
    group: int | None = None
    """The slot group of the channel, when the workload knows the slot table (availability)."""
    transport: str | None = None

    F: ClassVar[tuple[str, ...]] = ("send",)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["attempt"] == 1:
            del d["attempt"]
        return _drop_none(d)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SendValue:
        attempt = d.get("attempt", 1)
        return cls(
            client_msg_no=_str(d, "client_msg_no"),
            from_uid=_str(d, "from_uid"),
            payload_hash=_str(d, "payload_hash"),
            message_id=_opt_int(d, "message_id"),
            message_seq=_opt_int(d, "message_seq"),
            reason=_opt_int(d, "reason"),
            error=_opt_str(d, "error"),
            attempt=_as_int(attempt, "attempt"),
            group=_opt_int(d, "group"),
            transport=_opt_str(d, "transport"),
        )


@dataclass(frozen=True, slots=True)
class ReadMessage:
    """One message as a sync returned it. JSON: ``[seq, message_id, client_msg_no, from_uid,
    payload_hash]`` (an array: final reads hold every message of a channel)."""

    seq: int
    message_id: int
    client_msg_no: str
    from_uid: str
    payload_hash: str

    def to_json(self) -> list[Any]:
        return [self.seq, self.message_id, self.client_msg_no, self.from_uid, self.payload_hash]

    @classmethod
    def from_json(cls, v: Any) -> ReadMessage:
        if not isinstance(v, list) or len(v) != 5:
            raise HistoryError(f"a read message must be a 5-element array, got {v!r}")
        return cls(
            seq=_as_int(v[0], "seq"),
            message_id=_as_int(v[1], "message_id"),
            client_msg_no=_as_str(v[2], "client_msg_no"),
            from_uid=_as_str(v[3], "from_uid"),
            payload_hash=_as_str(v[4], "payload_hash"),
        )


@dataclass(frozen=True, slots=True)
class ReadValue:
    """A sync of one channel by seq (``/channel/messagesync``), possibly over several pages.

    Messages are recorded in ascending seq order. ``complete`` means the reader kept paging until
    the server said there was nothing more (up to ``end_seq`` if one was asked): only then does
    the read claim to cover everything from ``start_seq`` on. ``head`` is the channel's last seq
    if the server reported it."""

    start_seq: int = 1
    end_seq: int | None = None
    messages: tuple[ReadMessage, ...] = ()
    complete: bool = False
    head: int | None = None
    uid: str | None = None

    F: ClassVar[tuple[str, ...]] = ("read", "final_read")

    @property
    def first_seq(self) -> int:
        """The first seq the read asks for (messagesync treats 0 as "from the start")."""
        return max(1, self.start_seq)

    def covered_to(self) -> float:
        """The last seq this read vouches for: every message in ``[first_seq, covered_to]`` that
        existed when the read ran must be in it."""
        if self.complete:
            return math.inf if self.end_seq is None or self.end_seq <= 0 else self.end_seq
        return max((m.seq for m in self.messages), default=0)

    def covers(self, seq: int) -> bool:
        return self.first_seq <= seq <= self.covered_to()

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "start_seq": self.start_seq,
            "end_seq": self.end_seq,
            "head": self.head,
            "uid": self.uid,
        }
        if self.messages:
            d["messages"] = [m.to_json() for m in self.messages]
        if self.complete:
            d["complete"] = True
        return _drop_none(d)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ReadValue:
        raw = d.get("messages", [])
        if not isinstance(raw, list):
            raise HistoryError("field 'messages' must be an array")
        complete = d.get("complete", False)
        if not isinstance(complete, bool):
            raise HistoryError("field 'complete' must be a boolean")
        return cls(
            start_seq=_as_int(d.get("start_seq", 1), "start_seq"),
            end_seq=_opt_int(d, "end_seq"),
            messages=tuple(ReadMessage.from_json(m) for m in raw),
            complete=complete,
            head=_opt_int(d, "head"),
            uid=_opt_str(d, "uid"),
        )


@dataclass(frozen=True, slots=True)
class RecvValue:
    """A RECV pushed to one session. A reconnect is a new ``session``; delivery order is checked
    per session and channel. The recorder canonicalises the channel (a person RECV names the
    sender as its channel id)."""

    session: str
    seq: int
    message_id: int
    client_msg_no: str
    from_uid: str
    payload_hash: str | None = None
    uid: str | None = None

    F: ClassVar[tuple[str, ...]] = ("recv",)

    def to_json(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RecvValue:
        return cls(
            session=_str(d, "session"),
            seq=_int(d, "seq"),
            message_id=_int(d, "message_id"),
            client_msg_no=_str(d, "client_msg_no"),
            from_uid=_str(d, "from_uid"),
            payload_hash=_opt_str(d, "payload_hash"),
            uid=_opt_str(d, "uid"),
        )


@dataclass(frozen=True, slots=True)
class ChannelDigest:
    head: int
    hash: str


@dataclass(frozen=True, slots=True)
class DigestValue:
    """One replica's view of one slot group: per channel, its head seq and a hash of its log.
    JSON channels: ``{"2:g1": [head, hash], ...}``."""

    node: int
    group: int
    channels: Mapping[str, ChannelDigest] = field(default_factory=dict)

    F: ClassVar[tuple[str, ...]] = ("replica_digest",)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "group": self.group,
            "channels": {c: [d.head, d.hash] for c, d in sorted(self.channels.items())},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DigestValue:
        raw = d.get("channels", {})
        if not isinstance(raw, dict):
            raise HistoryError("field 'channels' must be an object")
        channels: dict[str, ChannelDigest] = {}
        for name, pair in raw.items():
            if not isinstance(pair, list) or len(pair) != 2:
                raise HistoryError(f"digest of {name!r} must be [head, hash]")
            channels[name] = ChannelDigest(_as_int(pair[0], "head"), _as_str(pair[1], "hash"))
        return cls(node=_int(d, "node"), group=_int(d, "group"), channels=channels)


@dataclass(frozen=True, slots=True)
class NemesisValue:
    """A fault starting or stopping. ``fault_id`` pairs a start with its stop when faults of one
    kind overlap; without it, starts and stops of one ``fault`` pair first-in first-out."""

    fault: str
    action: Literal["start", "stop"]
    targets: tuple[str, ...] = ()
    fault_id: str | None = None

    F: ClassVar[tuple[str, ...]] = ("nemesis",)

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "fault": self.fault,
                "action": self.action,
                "targets": list(self.targets),
                "fault_id": self.fault_id,
            }
        )

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NemesisValue:
        action = _str(d, "action")
        if action not in ("start", "stop"):
            raise HistoryError(f"nemesis action must be 'start' or 'stop', got {action!r}")
        targets = d.get("targets", [])
        if not isinstance(targets, list):
            raise HistoryError("field 'targets' must be an array")
        return cls(
            fault=_str(d, "fault"),
            action=cast(Literal["start", "stop"], action),
            targets=tuple(_as_str(t, "targets") for t in targets),
            fault_id=_opt_str(d, "fault_id"),
        )


@dataclass(frozen=True, slots=True)
class FloorValue:
    """One user's position in one channel.

    ``read_floor`` and ``unread`` ops are observations (``/conversation/sync``): read floor
    (``readed_to_msg_seq``, the last seq read), unread count and channel head (``last_msg_seq``)
    as one answer reported them; any of the three may be missing. A ``clear_unread`` op is a
    request (``/conversations/clearUnread``) to move the floor up to ``floor``; once it
    completed ``ok``, the floor is at least that (the workload only asks for a seq it has seen
    the head reach, so the server's clamp to the head cannot lower it)."""

    uid: str
    floor: int | None = None
    unread: int | None = None
    head: int | None = None

    F: ClassVar[tuple[str, ...]] = ("read_floor", "unread", "clear_unread")

    def to_json(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FloorValue:
        return cls(
            uid=_str(d, "uid"),
            floor=_opt_int(d, "floor"),
            unread=_opt_int(d, "unread"),
            head=_opt_int(d, "head"),
        )


@dataclass(frozen=True, slots=True)
class RawValue:
    """The value of an operation kind no checker knows yet; kept as JSON."""

    data: Mapping[str, Any] = field(default_factory=dict)

    F: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RawValue:
        return cls(dict(d))


Value = SendValue | ReadValue | RecvValue | DigestValue | NemesisValue | FloorValue | RawValue
V = TypeVar("V", SendValue, ReadValue, RecvValue, DigestValue, NemesisValue, FloorValue, RawValue)

_VALUE_CLASSES: tuple[type[Value], ...] = (
    SendValue,
    ReadValue,
    RecvValue,
    DigestValue,
    NemesisValue,
    FloorValue,
)
VALUE_TYPES: dict[str, type[Value]] = {f: cls for cls in _VALUE_CLASSES for f in cls.F}
"""The value class of each known ``f``; any other ``f`` carries a :class:`RawValue`."""


def value_type(f: str) -> type[Value]:
    return VALUE_TYPES.get(f, RawValue)


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    f: str
    process: str
    op: int
    value: Value
    channel: str | None = None
    node: int | None = None
    time: float = 0.0
    mono: float = 0.0
    index: int = -1
    """Position in the history (file order); assigned by the recorder or loader, not written."""

    def __post_init__(self) -> None:
        # The value class is a function of f: a checker may rely on it without isinstance noise.
        if self.type not in EVENT_TYPES:
            raise HistoryError(f"unknown event type {self.type!r}")
        if not isinstance(self.value, value_type(self.f)):
            raise HistoryError(
                f"f {self.f!r} carries {value_type(self.f).__name__}, "
                f"got {type(self.value).__name__}"
            )

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "type": self.type,
                "f": self.f,
                "process": self.process,
                "op": self.op,
                "node": self.node,
                "channel": self.channel,
                "time": self.time,
                "mono": self.mono,
                "value": self.value.to_json(),
            }
        )

    @classmethod
    def from_json(cls, d: Mapping[str, Any], index: int = -1) -> Event:
        f = _str(d, "f")
        raw_value = d.get("value", {})
        if not isinstance(raw_value, dict):
            raise HistoryError("field 'value' must be an object")
        type_ = _str(d, "type")
        if type_ not in EVENT_TYPES:
            raise HistoryError(f"unknown event type {type_!r}")
        return cls(
            type=cast(EventType, type_),
            f=f,
            process=_str(d, "process"),
            op=_int(d, "op"),
            value=value_type(f).from_json(raw_value),
            channel=_opt_str(d, "channel"),
            node=_opt_int(d, "node"),
            time=_as_float(d.get("time", 0.0), "time"),
            mono=_as_float(_req(d, "mono"), "mono"),
            index=index,
        )


# --- recording ----------------------------------------------------------------------------------


class Clock(Protocol):
    def wall(self) -> float: ...

    def mono(self) -> float: ...


class SystemClock:
    def wall(self) -> float:
        return time.time()

    def mono(self) -> float:
        # CLOCK_MONOTONIC is machine-wide on Linux, so worker processes of one runner agree.
        return time.monotonic()


class PendingOp(Generic[V]):
    """An invoked operation waiting for its outcome. Complete it exactly once; the completion
    carries the invocation's value updated with ``changes`` (``message_seq=...``, ...)."""

    __slots__ = ("_done", "_recorder", "invoke")

    def __init__(self, recorder: Recorder, invoke: Event) -> None:
        self._recorder = recorder
        self.invoke = invoke
        self._done = False

    @property
    def value(self) -> V:
        return cast(V, self.invoke.value)

    @property
    def done(self) -> bool:
        return self._done

    def complete(self, type_: Outcome, **changes: Any) -> Event:
        if self._done:
            raise HistoryError(f"op {self.invoke.process}/{self.invoke.op} completed twice")
        self._done = True
        value = dataclasses.replace(self.value, **changes) if changes else self.value
        return self._recorder.record(
            type_,
            self.invoke.f,
            self.invoke.process,
            value,
            op=self.invoke.op,
            channel=self.invoke.channel,
            node=self.invoke.node,
        )

    def ok(self, **changes: Any) -> Event:
        return self.complete("ok", **changes)

    def fail(self, **changes: Any) -> Event:
        return self.complete("fail", **changes)

    def info(self, **changes: Any) -> Event:
        return self.complete("info", **changes)


class Recorder:
    """Stamps events with both clocks and an index, under one lock, and hands them to
    :meth:`_emit`. Safe to share between threads (trio's thread and worker threads)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        self._next_op = 0
        self._next_index = 0

    def invoke(
        self,
        f: str,
        process: str,
        value: V,
        *,
        channel: str | None = None,
        node: int | None = None,
    ) -> PendingOp[V]:
        event = self.record("invoke", f, process, value, channel=channel, node=node)
        return PendingOp(self, event)

    def observe(
        self,
        f: str,
        process: str,
        value: Value,
        *,
        channel: str | None = None,
        node: int | None = None,
    ) -> Event:
        """A lone ``ok`` event: something the process saw rather than asked for (a RECV)."""
        return self.record("ok", f, process, value, channel=channel, node=node)

    def record(
        self,
        type_: EventType,
        f: str,
        process: str,
        value: Value,
        *,
        op: int | None = None,
        channel: str | None = None,
        node: int | None = None,
    ) -> Event:
        with self._lock:
            # Stamping inside the lock keeps file order, index order and mono order the same.
            if op is None:
                op = self._next_op
                self._next_op += 1
            event = Event(
                type=type_,
                f=f,
                process=process,
                op=op,
                value=value,
                channel=channel,
                node=node,
                time=self.clock.wall(),
                mono=self.clock.mono(),
                index=self._next_index,
            )
            self._next_index += 1
            self._emit(event)
            return event

    def _emit(self, event: Event) -> None:
        raise NotImplementedError


class MemoryHistory(Recorder):
    """Keeps events in a list: for tests and for runners that check before writing."""

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self.events: list[Event] = []

    def _emit(self, event: Event) -> None:
        self.events.append(event)


class HistoryWriter(Recorder):
    """Writes events to a new JSONL file (an existing file is refused: a history is evidence and
    is never overwritten). ``flush()`` pushes buffered lines to the OS (and to the disk with
    ``fsync=True``); ``close()`` flushes. Use as a context manager."""

    def __init__(self, path: str | Path, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self.path = Path(path)
        self._file: io.TextIOWrapper | None = self.path.open("x", encoding="utf-8")

    def _emit(self, event: Event) -> None:
        if self._file is None:
            raise HistoryError(f"history {self.path} is closed")
        self._file.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")

    def flush(self, *, fsync: bool = False) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                if fsync:
                    os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- reading ------------------------------------------------------------------------------------


def parse_history(lines: Iterable[str], *, tolerate_torn_tail: bool = True) -> list[Event]:
    """Parse JSONL lines. A last line without its newline that does not parse is dropped when
    ``tolerate_torn_tail``: the runner may die mid-write, and the rest is still evidence."""
    events: list[Event] = []
    pending: tuple[int, str] | None = None
    for number, line in enumerate(lines, start=1):
        if pending is not None:
            _parse_line(pending[1], pending[0], events)
        pending = (number, line)
    if pending is not None:
        number, line = pending
        try:
            _parse_line(line, number, events)
        except HistoryError:
            if not (tolerate_torn_tail and not line.endswith("\n")):
                raise
    return events


def _parse_line(line: str, number: int, events: list[Event]) -> None:
    if not line.strip():
        return
    try:
        d = json.loads(line)
        if not isinstance(d, dict):
            raise HistoryError("a line must be a JSON object")
        events.append(Event.from_json(d, index=len(events)))
    except (json.JSONDecodeError, HistoryError) as e:
        raise HistoryError(f"line {number}: {e}") from e


def load_history(path: str | Path, *, tolerate_torn_tail: bool = True) -> list[Event]:
    with Path(path).open(encoding="utf-8") as fh:
        return parse_history(fh, tolerate_torn_tail=tolerate_torn_tail)


def dump_history(events: Iterable[Event], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for event in events:
            fh.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")


# --- operations: invokes paired with completions ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One operation: its invocation and its completion. A lone completion is an observation
    (``invoke`` is None); a lone invocation never completed and counts as ``info``."""

    process: str
    op: int
    f: str
    invoke: Event | None
    completion: Event | None

    @property
    def type(self) -> Outcome:
        if self.completion is None:
            return "info"
        return cast(Outcome, self.completion.type)

    @property
    def value(self) -> Value:
        event = self.completion if self.completion is not None else self.invoke
        assert event is not None
        return event.value

    @property
    def first(self) -> Event:
        event = self.invoke if self.invoke is not None else self.completion
        assert event is not None
        return event

    @property
    def channel(self) -> str | None:
        return self.first.channel

    @property
    def node(self) -> int | None:
        return self.first.node

    @property
    def invoke_mono(self) -> float:
        return self.first.mono

    @property
    def complete_mono(self) -> float:
        """When the outcome was known; +inf if it never was (it may still take effect)."""
        return self.completion.mono if self.completion is not None else math.inf

    @property
    def index(self) -> int:
        return self.first.index


def pair_ops(events: Iterable[Event]) -> list[Op]:
    """Pair each invoke with its completion by ``(process, op)``, in order of first event."""
    invokes: dict[tuple[str, int], Event] = {}
    completions: dict[tuple[str, int], Event] = {}
    order: list[tuple[str, int]] = []
    for event in events:
        key = (event.process, event.op)
        if event.type == "invoke":
            if key in invokes or key in completions:
                raise HistoryError(f"op {key} invoked twice or after its completion")
            invokes[key] = event
            order.append(key)
        else:
            if key in completions:
                raise HistoryError(f"op {key} completed twice")
            invoked = invokes.get(key)
            if invoked is not None and invoked.f != event.f:
                raise HistoryError(f"op {key} invoked as {invoked.f!r}, completed as {event.f!r}")
            completions[key] = event
            if invoked is None:
                order.append(key)
    ops: list[Op] = []
    for key in order:
        invoke, completion = invokes.get(key), completions.get(key)
        first = invoke if invoke is not None else completions[key]
        ops.append(Op(key[0], key[1], first.f, invoke, completion))
    return ops


class History:
    """An immutable history with its operations paired once; what the checkers take."""

    def __init__(self, events: Sequence[Event]) -> None:
        self.events: tuple[Event, ...] = tuple(events)

    @cached_property
    def ops(self) -> tuple[Op, ...]:
        return tuple(pair_ops(self.events))

    @cached_property
    def _by_f(self) -> dict[str, tuple[Op, ...]]:
        out: dict[str, list[Op]] = {}
        for op in self.ops:
            out.setdefault(op.f, []).append(op)
        return {f: tuple(ops) for f, ops in out.items()}

    def ops_of(self, *fs: str) -> list[Op]:
        """Ops of the given kinds, in history order."""
        if len(fs) == 1:
            return list(self._by_f.get(fs[0], ()))
        return sorted((op for f in fs for op in self._by_f.get(f, ())), key=lambda o: o.index)

    @property
    def end_mono(self) -> float:
        return max((e.mono for e in self.events), default=0.0)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    @classmethod
    def of(cls, history: History | Sequence[Event]) -> History:
        return history if isinstance(history, History) else cls(history)
