"""The cluster map: hash slots, node lists and the deterministic bootstrap placement."""

from __future__ import annotations

import zlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.placement import (
    HASH_SLOTS,
    NodeAddress,
    Placement,
    initial_placement,
    parse_nodes,
    slot_of,
)


def nodes(n: int, *, first_id: int = 1) -> list[NodeAddress]:
    return [NodeAddress(i, f"10.0.0.{i}") for i in range(first_id, first_id + n)]


# --- slots ------------------------------------------------------------------------------------


@given(st.text())
def test_slot_of_is_crc32_mod_256(key: str) -> None:
    slot = slot_of(key)
    assert 0 <= slot < HASH_SLOTS == 256
    assert slot == zlib.crc32(key.encode()) % 256


def test_slot_of_known_values_and_spread() -> None:
    assert slot_of("") == 0
    assert slot_of("u1") == zlib.crc32(b"u1") % 256
    assert slot_of("u2@u1") == zlib.crc32(b"u2@u1") % 256
    # unicode keys hash their UTF-8 bytes
    assert slot_of("群组") == zlib.crc32("群组".encode()) % 256
    # ten thousand uids land on nearly every slot
    assert len({slot_of(f"user-{i}") for i in range(10_000)}) == 256


# --- node lists -------------------------------------------------------------------------------


def test_parse_nodes() -> None:
    got = parse_nodes(" 1@127.0.0.11, 2@127.0.0.12 ,3@host.example,")
    assert got == [
        NodeAddress(1, "127.0.0.11"),
        NodeAddress(2, "127.0.0.12"),
        NodeAddress(3, "host.example"),
    ]
    assert [str(n) for n in got] == ["1@127.0.0.11", "2@127.0.0.12", "3@host.example"]
    assert parse_nodes("") == []
    assert parse_nodes(" , ") == []
    assert NodeAddress.parse(str(got[2])) == got[2]


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",  # no id
        "@127.0.0.1",  # empty id
        "1@",  # no host
        "a@127.0.0.1",  # id not a number
        "-1@127.0.0.1",
        "1.5@h",
        "1@h,2",  # one good, one bad
        "1:127.0.0.1",
    ],
)
def test_parse_nodes_refuses_bad_entries(text: str) -> None:
    with pytest.raises(ValueError, match="id@host"):
        parse_nodes(text)


def test_parse_nodes_refuses_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        parse_nodes("1@a,2@b,1@c")
    # the same host under two ids is allowed (several nodes on one machine)
    assert len(parse_nodes("1@a,2@a")) == 2


# --- initial placement ------------------------------------------------------------------------


@given(
    n=st.integers(1, 12),
    groups=st.integers(1, 64),
    replicas=st.integers(1, 5),
    first_id=st.integers(1, 100),
)
def test_initial_placement_invariants(n: int, groups: int, replicas: int, first_id: int) -> None:
    members = nodes(n, first_id=first_id)
    p = initial_placement(members, groups, replicas)
    r = min(replicas, n)
    ids = {m.node_id for m in members}
    assert p.version == 1
    assert p.nodes == {m.node_id: m.host for m in members}
    # every group: min(R, N) distinct replicas among the members
    assert sorted(p.groups) == list(range(1, groups + 1))
    for g, members_of_g in p.groups.items():
        assert len(members_of_g) == r == len(set(members_of_g)), g
        assert set(members_of_g) <= ids
    # (how evenly the replicas spread: test_replicas_spread_evenly)
    load = Counter(node for ms in p.groups.values() for node in ms)
    assert sum(load.values()) == groups * r
    for node in ids:
        assert p.groups_of_node(node) == sorted(g for g, ms in p.groups.items() if node in ms)
    # the slot table covers all 256 slots with groups 1..S, spread evenly
    assert len(p.slot_table) == HASH_SLOTS
    assert set(p.slot_table) == set(range(1, min(groups, HASH_SLOTS) + 1))
    per_group = Counter(p.slot_table)
    assert max(per_group.values()) - min(per_group.values()) <= 1
    # deterministic, whatever order the members are listed in
    again = initial_placement(list(reversed(members)), groups, replicas)
    assert again == p


@pytest.mark.parametrize(
    ("n", "groups", "replicas"),
    [
        (1, 8, 3),
        (2, 8, 3),
        (3, 8, 3),
        (4, 8, 3),
        (6, 8, 3),
        (7, 8, 3),
        (3, 256, 3),
        (8, 8, 1),
        (5, 8, 3),
        (5, 2, 2),
        (9, 16, 3),
    ],
)
def test_replicas_spread_evenly(n: int, groups: int, replicas: int) -> None:
    """Each node hosts groups * min(R, N) / N replicas, give or take one."""
    p = initial_placement(nodes(n), groups, replicas)
    load = Counter(node for ms in p.groups.values() for node in ms)
    mean = groups * min(replicas, n) / n
    loads = [load[i] for i in range(1, n + 1)]
    assert all(abs(x - mean) <= 1 for x in loads), (loads, mean)


def test_initial_placement_example() -> None:
    p = initial_placement(parse_nodes("3@c,1@a,2@b"), 4, 2)
    assert p.groups == {1: [1, 2], 2: [3, 1], 3: [2, 3], 4: [1, 2]}
    assert p.slot_table[:8] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert p.groups_of_node(3) == [2, 3]
    assert p.nodes == {1: "a", 2: "b", 3: "c"}
    key = "u2@u1"
    assert p.group_of(key) == p.slot_table[slot_of(key)]
    assert p.replicas(p.group_of(key)) == p.groups[p.group_of(key)]
    assert p.replicas(99) == []


def test_a_single_node_hosts_every_group_once() -> None:
    p = initial_placement(nodes(1), 8, 3)
    assert p.groups == {g: [1] for g in range(1, 9)}
    assert p.groups_of_node(1) == list(range(1, 9))


def test_initial_placement_needs_a_node() -> None:
    with pytest.raises(ValueError):
        initial_placement([], 8, 3)


def test_placement_is_plain_data() -> None:
    p = Placement(2, [1] * HASH_SLOTS, {1: [5]})
    assert p.nodes == {}
    assert p.group_of("anything") == 1
    assert p.groups_of_node(5) == [1] and p.groups_of_node(6) == []
