"""The send rate limits' token buckets, on a fake clock."""

from __future__ import annotations

from node.groups.rate_limit import ChannelRateLimiter
from node.rate_limit import MAX_BUCKETS, TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_of_one_second_then_refill() -> None:
    clock = Clock()
    limiter = ChannelRateLimiter(4, clock)
    assert [limiter.allow(2, "g") for _ in range(6)] == [True] * 4 + [False] * 2
    clock.now += 0.5  # two tokens back
    assert [limiter.allow(2, "g") for _ in range(3)] == [True, True, False]
    assert limiter.refused == 3


def test_channels_are_independent_and_person_channels_unlimited() -> None:
    limiter = ChannelRateLimiter(1, Clock())
    assert limiter.allow(2, "a") and not limiter.allow(2, "a")
    assert limiter.allow(2, "b")
    assert limiter.allow(9, "a")  # same id, other type: another channel
    assert all(limiter.allow(1, "x@y") for _ in range(100))


def test_zero_rate_is_off() -> None:
    limiter = ChannelRateLimiter(0, Clock())
    assert all(limiter.allow(2, "g") for _ in range(1000))


def test_idle_bucket_never_exceeds_its_burst() -> None:
    clock = Clock()
    limiter = ChannelRateLimiter(2, clock)
    limiter.allow(2, "g")
    clock.now += 3600
    assert [limiter.allow(2, "g") for _ in range(3)] == [True, True, False]


def test_a_rate_below_one_per_second_still_lets_a_send_through() -> None:
    clock = Clock()
    buckets = TokenBuckets(0.5, clock)
    assert [buckets.allow("u") for _ in range(2)] == [True, False]
    clock.now += 1.0  # half a token back: not yet
    assert not buckets.allow("u")
    clock.now += 1.0
    assert buckets.allow("u")


def test_keys_are_independent_and_forgotten_least_recently_used_first() -> None:
    buckets = TokenBuckets(1, Clock())
    assert buckets.allow("a") and not buckets.allow("a")
    assert buckets.allow("b")
    for i in range(MAX_BUCKETS):
        buckets.allow(i)
    assert buckets.allow("a")  # its empty bucket was forgotten: a fresh one
