"""Token buckets by key, on a monotonic clock: the shape of every send rate limit.

A key gets ``rate`` tokens per second and holds at most one second's worth, and never less
than one token (a rate below 1/s still lets a send through now and then). Buckets
are node-local on purpose: a limit never enters Raft apply, which must not depend on wall-clock
rates. Memory is bounded: past ``MAX_BUCKETS`` keys, the least recently used is forgotten (it
was idle, so it would have refilled anyway unless the table is churned faster than a second).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable

MAX_BUCKETS = 65_536


class TokenBuckets:
    """``rate`` 0 switches the limit off."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(rate, 1.0)
        self._clock = clock
        # key -> (tokens, time of the last refill)
        self._buckets: collections.OrderedDict[Hashable, tuple[float, float]] = (
            collections.OrderedDict()
        )
        self.refused = 0

    def allow(self, key: Hashable) -> bool:
        """Take one token of ``key``'s bucket; False when it has none left."""
        if self.rate <= 0:
            return True
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            self.refused += 1
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return allowed
