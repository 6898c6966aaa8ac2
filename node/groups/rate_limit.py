"""Per-channel send rate limit, enforced by a slot group's leader before it proposes a send.

Node-local on purpose: Raft apply must not depend on wall-clock rates, and only the leader
proposes, so a bucket kept there sees every send of its channels. A new leader starts with full
buckets, which at worst lets one extra second's burst through after a failover.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from proto.wkproto import ChannelType

MAX_BUCKETS = 65_536
"""Channels remembered at once; the least recently used bucket is forgotten (it was idle, so
it would have refilled anyway unless the table is churned faster than a second)."""


class ChannelRateLimiter:
    """A token bucket per non-person channel: ``rate`` sends per second, bursts up to ``rate``
    (one second's worth). ``rate`` 0 switches the limit off."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        # channel -> (tokens, time of the last refill)
        self._buckets: collections.OrderedDict[tuple[int, str], tuple[float, float]] = (
            collections.OrderedDict()
        )
        self.refused = 0

    def allow(self, channel_type: int, channel_id: str) -> bool:
        """Take one token for a send to this channel; False when it has none left."""
        if self.rate <= 0 or channel_type == ChannelType.PERSON:
            return True
        now = self._clock()
        key = (channel_type, channel_id)
        tokens, last = self._buckets.get(key, (self.rate, now))
        tokens = min(self.rate, tokens + (now - last) * self.rate)
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
