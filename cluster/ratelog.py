"""Log lines about hostile or broken input, at most one per key per interval.

A peer that sends garbage a thousand times a second must not turn into a thousand log lines a
second: that would let bad input amplify into disk and CPU. Each event has a key (usually the
kind of event and the peer's address); the first event of a key in an interval is logged, the
rest are counted, and the next line that gets through says how many were suppressed.

Lives in ``cluster`` (the lowest layer that logs) so that the Raft ports, the peer gRPC server
and the node's listeners share it. Thread-safe: the Raft driver thread and trio both use it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

MAX_KEYS = 4096
"""Keys remembered at once; beyond, the least recently logged is forgotten (an attacker with
many addresses then gets at most one line per address per interval, as intended)."""


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._level = level
        self._lock = threading.Lock()
        # key -> (time of the last line, events suppressed since)
        self._keys: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def event(self, key: Hashable, msg: str, **fields: Any) -> bool:
        """Record one event; True when it was logged, False when it was only counted."""
        now = self._clock()
        with self._lock:
            last, suppressed = self._keys.get(key, (None, 0))
            if last is not None and now - last < self._interval:
                self._keys[key] = (last, suppressed + 1)
                return False
            self._keys[key] = (now, 0)
            self._keys.move_to_end(key)
            if len(self._keys) > MAX_KEYS:
                self._keys.popitem(last=False)
        if suppressed:
            fields["suppressed"] = suppressed
        # ``fields`` is what node/log.py's formatters print as structured members.
        self._log.log(self._level, msg, extra={"fields": fields})
        return True
