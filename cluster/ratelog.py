"""Log lines for events that a peer can cause at will, at most one per key per interval.

A refused connection, a frame that fails authentication or a call with a wrong token deserves a
line in the log, but each costs an attacker one packet: logged one by one, bad input would turn
into log volume (disk, and the operator's attention). ``RateLimitedLog`` writes the first event
of a key (a source address, say) at once and counts the key's further events for
``interval_s``; when the interval is over, one line gives the count with the text of the last
of them, and opens the next interval. A key costs at most one line per interval however much
it sends. The table of keys is bounded too: beyond ``max_keys`` keys with an open interval, new
keys share one overflow entry (their lines still name the source in their text).

Counts are reported by the next ``log`` or ``flush`` after their interval ends: whoever owns a
loop calls ``flush`` now and then (cheap when nothing is held back).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

OVERFLOW_KEY = "*"
"""The key that events of new keys count under while the table is full."""


_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | None
_Line = tuple[int, str, dict[str, Any], _ExcInfo]


@dataclass
class _Window:
    opened: float
    held: int = 0
    last: tuple[int, str, dict[str, Any]] = (0, "", {})


class RateLimitedLog:
    """Thread-safe; lines are written outside the lock."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # Insertion order is opening order (windows open at the clock's time, which never goes
        # back), so the windows to close are always at the front.
        self._windows: dict[Hashable, _Window] = {}

    def info(self, key: Hashable, msg: str, **fields: Any) -> bool:
        return self.log(logging.INFO, key, msg, **fields)

    def warning(self, key: Hashable, msg: str, **fields: Any) -> bool:
        return self.log(logging.WARNING, key, msg, **fields)

    def exception(self, key: Hashable, msg: str, **fields: Any) -> bool:
        """An ERROR line with the traceback of the exception being handled (call it from an
        ``except`` block); the count lines after it carry no traceback."""
        exc = sys.exc_info()
        return self.log(logging.ERROR, key, msg, _exc_info=exc if exc[0] else None, **fields)

    def log(
        self, level: int, key: Hashable, msg: str, _exc_info: _ExcInfo = None, **fields: Any
    ) -> bool:
        """Write ``msg`` now if ``key`` has no open interval, else count it for later; True
        when it was written. ``fields`` go to the record as ``fields`` (structured logs,
        ``node/log.py``)."""
        with self._lock:
            now = self._clock()
            due = self._close_windows(now)
            if key not in self._windows and len(self._windows) >= self._max_keys:
                key = OVERFLOW_KEY
            window = self._windows.get(key)
            written = window is None
            if window is None:
                self._windows[key] = _Window(now)
                due.append((level, msg, fields, _exc_info))
            else:
                window.held += 1
                window.last = (level, msg, fields)
        self._write(due)
        return written

    def flush(self) -> None:
        """Write the counts of intervals that have ended."""
        if not self._windows:  # the common case, without the lock
            return
        with self._lock:
            due = self._close_windows(self._clock())
        self._write(due)

    def close(self) -> None:
        """Write the counts of every interval, ended or not, and forget them (at exit)."""
        with self._lock:
            due: list[_Line] = []
            for key, window in self._windows.items():
                if window.held:
                    due.append(self._count_line(key, window))
            self._windows.clear()
        self._write(due)

    def _count_line(self, key: Hashable, window: _Window) -> _Line:
        level, msg, fields = window.last
        source = key if key != OVERFLOW_KEY else "sources beyond the table's limit"
        return (
            level,
            f"{window.held} more from {source} in the last {self.interval_s:g} s, the last: {msg}",
            {**fields, "held_back": window.held},
            None,
        )

    def _close_windows(self, now: float) -> list[_Line]:
        due: list[_Line] = []
        while self._windows:
            key = next(iter(self._windows))
            window = self._windows[key]
            if now - window.opened < self.interval_s:
                break
            del self._windows[key]
            if window.held:
                due.append(self._count_line(key, window))
                # The count line was this key's line for a new interval.
                self._windows[key] = _Window(now)
        return due

    def _write(self, lines: list[_Line]) -> None:
        for level, msg, fields, exc_info in lines:
            self._logger.log(level, msg, exc_info=exc_info, extra={"fields": fields})
