"""Rate-limited log lines on an injected clock: one line per key and interval, the suppressed
count on the key's next line, bounded keys."""

from __future__ import annotations

from typing import Any

import pytest

from node.ratelog import OVERFLOW_KEY, RateLimitedLog


class FakeLogger:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, msg: str, **fields: Any) -> None:
        self.lines.append(("warning", msg, fields))

    def exception(self, msg: str, **fields: Any) -> None:
        self.lines.append(("exception", msg, fields))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts() -> tuple[FakeLogger, Clock]:
    return FakeLogger(), Clock()


def make(parts: tuple[FakeLogger, Clock], **kw: Any) -> RateLimitedLog:
    logger, clock = parts
    return RateLimitedLog(logger, 10.0, clock, **kw)  # type: ignore[arg-type]


def test_one_line_per_key_and_interval_then_the_suppressed_count(
    parts: tuple[FakeLogger, Clock],
) -> None:
    logger, clock = parts
    rl = make(parts)
    assert rl.event("a", "refused", client="a")
    for _ in range(5):
        clock.now += 1
        assert not rl.event("a", "refused", client="a")
    assert rl.event("b", "refused", client="b")  # another key has its own budget
    clock.now += 5  # 10 s after a's line
    assert rl.event("a", "refused", client="a")
    assert logger.lines == [
        ("warning", "refused", {"client": "a"}),
        ("warning", "refused", {"client": "b"}),
        ("warning", "refused", {"client": "a", "suppressed": 5}),
    ]
    clock.now += 10
    assert rl.event("a", "refused", client="a")
    assert "suppressed" not in logger.lines[-1][2]  # nothing suppressed since


def test_keys_are_bounded_and_the_overflow_shares_one_budget(
    parts: tuple[FakeLogger, Clock],
) -> None:
    logger, clock = parts
    rl = make(parts, max_keys=3)
    for key in "abc":
        assert rl.event(key, "x")
    assert rl.event("d", "x")  # no room: logged under the overflow key
    assert not rl.event("e", "x")  # same overflow budget
    assert len(logger.lines) == 4
    clock.now += 10  # every key's interval over: they are forgotten to make room
    assert rl.event("f", "x")
    assert rl.event("g", "x")
    assert len(rl._keys) <= 3 and OVERFLOW_KEY not in rl._keys


def test_exception_level_logs_from_an_except_block(parts: tuple[FakeLogger, Clock]) -> None:
    logger, _ = parts
    rl = make(parts, level="exception")
    for _ in range(3):
        try:
            raise RuntimeError("bug")
        except RuntimeError:
            rl.event("/path", "handler failed", path="/path")
    assert logger.lines == [("exception", "handler failed", {"path": "/path"})]
