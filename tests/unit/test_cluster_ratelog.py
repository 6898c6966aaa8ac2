"""``cluster/ratelog.py``: events a peer can cause at will cost at most one line per key and
interval, and the lines say how many were held back."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from cluster.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def lines() -> Iterator[list[logging.LogRecord]]:
    logger = logging.getLogger("test.ratelog")
    handler = Collect()
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def make(clock: Clock, **kw: object) -> RateLimitedLog:
    return RateLimitedLog(logging.getLogger("test.ratelog"), 10.0, clock=clock, **kw)  # type: ignore[arg-type]


def test_a_keys_first_event_is_written_at_once_and_the_rest_counted(
    clock: Clock, lines: list[logging.LogRecord]
) -> None:
    log = make(clock)
    log.warning("10.0.0.1", "bad frame 0", peer="10.0.0.1")
    assert [r.getMessage() for r in lines] == ["bad frame 0"]
    assert lines[0].levelno == logging.WARNING
    assert lines[0].fields == {"peer": "10.0.0.1"}  # type: ignore[attr-defined]
    for i in range(1, 50):
        clock.now += 0.1
        log.warning("10.0.0.1", f"bad frame {i}", peer="10.0.0.1")
    assert len(lines) == 1
    clock.now += 5.1  # the interval (10 s from the first line) is over
    log.flush()
    assert len(lines) == 2
    assert lines[1].getMessage() == (
        "49 more from 10.0.0.1 in the last 10 s, the last: bad frame 49"
    )
    assert lines[1].fields == {"peer": "10.0.0.1", "held_back": 49}  # type: ignore[attr-defined]


def test_the_count_line_opens_the_next_interval(
    clock: Clock, lines: list[logging.LogRecord]
) -> None:
    log = make(clock)
    log.warning("a", "one")
    log.warning("a", "two")
    clock.now += 10
    log.warning("a", "three")  # closes the first interval (count line), counted in the next
    assert [r.getMessage() for r in lines] == [
        "one",
        "1 more from a in the last 10 s, the last: two",
    ]
    clock.now += 10
    log.flush()
    assert lines[-1].getMessage() == "1 more from a in the last 10 s, the last: three"
    # an interval without further events closes quietly, and the key starts afresh
    clock.now += 10
    log.flush()
    log.warning("a", "four")
    assert [r.getMessage() for r in lines][-2:] == [
        "1 more from a in the last 10 s, the last: three",
        "four",
    ]


def test_keys_are_limited_independently(clock: Clock, lines: list[logging.LogRecord]) -> None:
    log = make(clock)
    for _ in range(3):
        log.warning("a", "from a")
        log.warning("b", "from b")
    assert [r.getMessage() for r in lines] == ["from a", "from b"]


def test_lines_stay_bounded_however_many_events_and_keys(
    clock: Clock, lines: list[logging.LogRecord]
) -> None:
    log = make(clock, max_keys=20)
    events = 0
    for step in range(600):  # 60 s, 100 events per 0.1 s from 500 sources
        clock.now += 0.1
        for i in range(100):
            log.warning(f"10.0.{step % 5}.{i}", "junk")
            events += 1
    log.flush()
    # 20 keys + the overflow entry, each at most one line per 10 s (7 intervals began)
    assert len(lines) <= 21 * 7
    held = sum(getattr(r, "fields", {}).get("held_back", 0) for r in lines)
    first_lines = sum(1 for r in lines if "held_back" not in getattr(r, "fields", {}))
    assert held + first_lines <= events
    assert any("sources beyond the table's limit" in r.getMessage() for r in lines)


def test_flush_without_events_writes_nothing(clock: Clock, lines: list[logging.LogRecord]) -> None:
    log = make(clock)
    log.flush()
    log.warning("a", "x")
    clock.now += 30
    log.flush()
    assert [r.getMessage() for r in lines] == ["x"]
