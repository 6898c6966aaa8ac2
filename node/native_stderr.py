"""File descriptor 2 of a node that logs JSON: a pipe read by a thread that turns every line
written there into a JSON log record, so that a log holds JSON lines only.

What writes to fd 2 without going through Python's ``logging``: grpc's C core (its own
``E1207 13:13:35.537081 18340 chttp2_transport.cc:1435] ...`` lines, such as a peer's GOAWAY
``too_many_pings``; ``GRPC_VERBOSITY`` and ``GRPC_TRACE`` choose how many), RocksDB, and Python
itself (a traceback, the node's last words on exit). grpc's lines keep their level and source
position; any other line is a ``stderr`` record at level warning, and a traceback is one record
when it arrives in one read of the pipe (its lines are written together).

The reader is a thread of the node: what a node writes in the instant before it is SIGKILLed
or crashes in native code can be lost. ``close()`` (at exit) drains the pipe first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

# grpc (absl) log line: severity letter, MMDD, time, thread id, file:line], message.
_GRPC_LINE = re.compile(r"^([DIWEF])\d{4} [\d:.]+\s+\d+ ([^\s\]]+:\d+)\] ?(.*)$")
_GRPC_LEVELS = {
    "D": logging.DEBUG,
    "I": logging.INFO,
    "W": logging.WARNING,
    "E": logging.ERROR,
    "F": logging.CRITICAL,
}
# absl's one line before its logging is set up (grpc initialises it lazily).
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"

READ_SIZE = 65536
IDLE_S = 1.0
QUIET_S = 0.02
BATCH_LINES = 1000
"""How often the reader thread, when fd 2 is quiet, lets the log report held-back counts."""
CLOSE_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class Record:
    component: str
    level: int
    msg: str
    fields: dict[str, Any] = field(default_factory=dict)


_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def _continues(current: list[str], line: str) -> bool:
    """Whether ``line`` belongs to the record of ``current``: the indented lines of a
    traceback, the exception line after them, and the lines that chain tracebacks."""
    if not current:
        return False
    if line[:1].isspace():
        return True
    if not current[0].startswith("Traceback"):
        return False
    return current[-1][:1].isspace() or line == "" or current[-1] == "" or line.startswith(_CHAINED)


def records_of(lines: list[str]) -> list[Record]:
    """The log records of complete lines: each grpc line its own record, and so each other
    line, but for a traceback, which is one record."""
    out: list[Record] = []
    other: list[str] = []

    def flush_other() -> None:
        text = "\n".join(other).strip("\n")
        if text:
            out.append(Record("stderr", logging.WARNING, text))
        other.clear()

    for line in lines:
        m = _GRPC_LINE.match(line)
        if m is not None:
            flush_other()
            level, source, msg = m.groups()
            out.append(Record("grpc", _GRPC_LEVELS[level], msg, {"source": source}))
        elif line.startswith(_ABSL_PREAMBLE):
            flush_other()
            out.append(Record("grpc", logging.INFO, line))
        elif _continues(other, line):
            other.append(line)
        else:
            flush_other()
            other.append(line)
    flush_other()
    return out


class StderrCapture:
    """Points fd 2 at a pipe; ``emit`` gets each record, from the reader thread."""

    def __init__(
        self, emit: Callable[[Record], None], idle: Callable[[], None] | None = None
    ) -> None:
        self._emit = emit
        self._idle = idle
        """Called from the reader thread when nothing was written for ``IDLE_S``."""
        sys.stderr.flush()
        self._saved = os.dup(2)
        self.original: TextIO = os.fdopen(
            os.dup(self._saved), "w", buffering=1, encoding="utf-8", errors="replace"
        )
        """The process's real stderr, where the log handler writes."""
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._read_fd = read_fd
        self._thread = threading.Thread(target=self._pump, name="stderr-to-log", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        # Lines are handed on once fd 2 has been quiet for QUIET_S (or BATCH_LINES have
        # gathered): a traceback arrives in several writes, and it is one record only if its
        # lines are grouped together (``records_of``).
        pending = b""
        batch: list[bytes] = []
        poller = select.poll()  # not select(): any descriptor number
        poller.register(self._read_fd, select.POLLIN)
        while True:
            try:
                if not poller.poll((QUIET_S if batch else IDLE_S) * 1000):
                    if batch:
                        self._deliver(batch)
                        batch = []
                    elif self._idle is not None:
                        with contextlib.suppress(Exception):  # the reader must go on
                            self._idle()
                    continue
                chunk = os.read(self._read_fd, READ_SIZE)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            batch.extend(complete)
            if len(batch) >= BATCH_LINES:
                self._deliver(batch)
                batch = []
        if pending:
            batch.append(pending)
        self._deliver(batch)
        os.close(self._read_fd)

    def _deliver(self, lines: list[bytes]) -> None:
        for record in records_of([ln.decode("utf-8", "replace").rstrip("\r") for ln in lines]):
            try:
                self._emit(record)
            except Exception:  # a record that cannot be written must not stop the reader
                continue

    def close(self) -> None:
        """Give fd 2 back to the real stderr and wait (bounded) for the reader to log what
        was written so far."""
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(self._saved, 2)  # the pipe's last write end: the reader sees its end
        self._thread.join(CLOSE_WAIT_S)
