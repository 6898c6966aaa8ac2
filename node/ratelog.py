"""Log lines that hostile input can trigger, at most one per key per interval.

A listener that logs every refused connection or bad request turns an attack into disk and CPU
spent on logs. ``RateLimitedLog.event`` writes the first event of a key, then counts the key's
events until ``interval_s`` has passed; the key's next line carries that count as
``suppressed``. The keys kept are bounded (``max_keys``): beyond them, events share one key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

from .log import Logger

OVERFLOW_KEY = "(other keys)"


class RateLimitedLog:
    def __init__(
        self,
        logger: Logger,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        level: str = "warning",
        max_keys: int = 1024,
    ) -> None:
        """``level`` names a ``Logger`` method: ``info``, ``warning``, ``error`` or
        ``exception`` (the latter only from an ``except`` block: it logs the traceback)."""
        self._write: Callable[..., None] = getattr(logger, level)
        self._interval = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._keys: dict[Hashable, list[float]] = {}
        """key -> [time of its last line, events suppressed since]."""

    def event(self, key: Hashable, msg: str, **fields: Any) -> bool:
        """Log ``msg`` unless ``key`` had a line within the interval; True if it was logged."""
        now = self._clock()
        entry = self._keys.get(key)
        if entry is None and len(self._keys) >= self._max_keys:
            self._forget_quiet_keys(now)
            if len(self._keys) >= self._max_keys:
                key = OVERFLOW_KEY
                entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self._interval:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            fields["suppressed"] = int(entry[1])
        self._keys[key] = [now, 0]
        self._write(msg, **fields)
        return True

    def _forget_quiet_keys(self, now: float) -> None:
        """Drop keys whose interval is over; their suppressed counts go unreported, which
        keeps the memory bounded at the price of a lower bound in the logs."""
        quiet = [k for k, (t, _) in self._keys.items() if now - t >= self._interval]
        for k in quiet:
            del self._keys[k]
