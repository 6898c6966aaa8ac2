"""Per-channel send rate limit, enforced by a slot group's leader before it proposes a send.

Only the leader proposes, so a bucket kept there sees every send of its channels. A new leader
starts with full buckets, which at worst lets one extra second's burst through after a
failover. Person channels are limited per sender instead, where sends enter the cluster
(``node/send_checks.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from proto.wkproto import ChannelType

from ..rate_limit import TokenBuckets


class ChannelRateLimiter:
    """A token bucket per non-person channel: ``rate`` sends per second, bursts up to ``rate``
    (one second's worth). ``rate`` 0 switches the limit off."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets = TokenBuckets(rate, clock)

    @property
    def rate(self) -> float:
        return self._buckets.rate

    @property
    def refused(self) -> int:
        return self._buckets.refused

    def allow(self, channel_type: int, channel_id: str) -> bool:
        """Take one token for a send to this channel; False when it has none left."""
        if channel_type == ChannelType.PERSON:
            return True
        return self._buckets.allow((channel_type, channel_id))
