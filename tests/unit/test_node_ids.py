"""Snowflake message ids: monotonic, node id in bits 12..21, unique across nodes."""

from __future__ import annotations

import itertools
import time

import pytest

from node.ids import EPOCH_MS, SnowflakeIds


def node_of(mid: int) -> int:
    return (mid >> 12) & 0x3FF


def ms_of(mid: int) -> int:
    return (mid >> 22) + EPOCH_MS


def test_strictly_increasing_over_10k_calls() -> None:
    gen = SnowflakeIds(5)
    out = [gen.next() for _ in range(10_000)]
    assert all(b > a for a, b in itertools.pairwise(out))
    assert all(m > 0 for m in out)


@pytest.mark.parametrize("node_id", [0, 1, 5, 513, 1023])
def test_node_id_in_bits_12_to_21(node_id: int) -> None:
    gen = SnowflakeIds(node_id)
    for _ in range(100):
        assert node_of(gen.next()) == node_id


@pytest.mark.parametrize("bad", [1024, 2048, -1])
def test_rejects_node_ids_that_do_not_fit(bad: int) -> None:
    with pytest.raises(ValueError):
        SnowflakeIds(bad)


def test_two_nodes_never_collide() -> None:
    a, b = SnowflakeIds(1), SnowflakeIds(2)
    ids_a = [a.next() for _ in range(5_000)]
    ids_b = [b.next() for _ in range(5_000)]
    assert len(set(ids_a)) == 5_000
    assert len(set(ids_b)) == 5_000
    assert not set(ids_a) & set(ids_b)


def test_timestamp_bits_carry_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_750_000_000.123)
    mid = SnowflakeIds(3).next()
    assert ms_of(mid) == 1_750_000_000_123
    assert node_of(mid) == 3


def test_more_than_4096_ids_in_one_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen clock forces the 12-bit sequence to wrap: ids must still increase."""
    monkeypatch.setattr(time, "time", lambda: 1_750_000_000.0)
    gen = SnowflakeIds(7)
    out = [gen.next() for _ in range(3 * 4096 + 10)]
    assert all(b > a for a, b in itertools.pairwise(out))
    assert all(node_of(m) == 7 for m in out)
    # it borrowed the following milliseconds
    assert ms_of(out[-1]) == 1_750_000_000_000 + 3


def test_clock_going_backwards_does_not_reorder(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_750_000_010.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    gen = SnowflakeIds(9)
    first = [gen.next() for _ in range(10)]
    now[0] -= 5.0  # NTP step back by five seconds
    second = [gen.next() for _ in range(10)]
    now[0] += 10.0
    third = [gen.next() for _ in range(10)]
    out = first + second + third
    assert all(b > a for a, b in itertools.pairwise(out))
    assert ms_of(third[0]) == 1_750_000_015_000
