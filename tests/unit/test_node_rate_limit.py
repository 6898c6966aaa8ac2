"""The per-channel token bucket, on a fake clock."""

from __future__ import annotations

from node.groups.rate_limit import ChannelRateLimiter


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
