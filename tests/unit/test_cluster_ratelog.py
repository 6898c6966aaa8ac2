"""Rate-limited log lines (cluster/ratelog.py) on a fake clock."""

from __future__ import annotations

import logging

import pytest

from cluster.ratelog import MAX_KEYS, RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, object]]]:
    return [(r.getMessage(), dict(getattr(r, "fields", {}))) for r in caplog.records]


def test_one_line_per_key_per_interval_then_the_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("raftchat.test.ratelog"), 10.0, clock)
    with caplog.at_level(logging.WARNING, "raftchat.test.ratelog"):
        assert log.event("a", "bad frame", peer="a")
        assert not any(log.event("a", "bad frame", peer="a") for _ in range(999))
        assert log.event("b", "bad frame", peer="b")  # another key is not held back
        clock.now += 10.0
        assert log.event("a", "bad frame", peer="a")
        clock.now += 10.0
        assert log.event("a", "bad frame", peer="a")
    assert lines(caplog) == [
        ("bad frame", {"peer": "a"}),
        ("bad frame", {"peer": "b"}),
        ("bad frame", {"peer": "a", "suppressed": 999}),
        ("bad frame", {"peer": "a"}),
    ]


def test_memory_is_bounded_and_a_forgotten_key_logs_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = RateLimitedLog(logging.getLogger("raftchat.test.ratelog"), 10.0, Clock())
    with caplog.at_level(logging.WARNING, "raftchat.test.ratelog"):
        for i in range(MAX_KEYS + 1):
            assert log.event(i, "x")
        assert log.event(0, "x")  # the oldest key was forgotten
        assert not log.event(MAX_KEYS, "x")
    assert len(log._keys) == MAX_KEYS
