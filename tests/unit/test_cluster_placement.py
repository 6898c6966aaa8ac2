"""The cluster map: hash slots, node lists and the deterministic bootstrap placement."""

from __future__ import annotations

import zlib
from collections import Counter

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cluster.placement import (
    HASH_SLOTS,
    NodeAddress,
    Placement,
    desired_replicas,
    initial_placement,
    parse_nodes,
    slot_of,
    zone_of,
    zone_problem,
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


# --- zones ------------------------------------------------------------------------------------


def old_initial_groups(nodes: list[NodeAddress], group_count: int, replicas: int) -> dict:
    """The bootstrap deal as it was before zones (the reference the zoneless case must equal)."""
    ordered = sorted(nodes, key=lambda n: n.node_id)
    r = min(replicas, len(ordered))
    return {
        g: [ordered[((g - 1) * r + i) % len(ordered)].node_id for i in range(r)]
        for g in range(1, group_count + 1)
    }


def old_desired_replicas(
    current: dict[int, list[int]], active: list[int], replicas: int
) -> dict[int, list[int]]:
    """``desired_replicas`` as it was before zones, word for word (the reference)."""
    if not active:
        return {g: [] for g in current}
    r = min(replicas, len(active))
    target = {g: [n for n in members if n in active] for g, members in sorted(current.items())}
    load = {n: 0 for n in active}
    for members in target.values():
        for n in members:
            load[n] += 1

    def least_loaded(exclude: list[int]) -> int:
        return min((n for n in active if n not in exclude), key=lambda n: (load[n], n))

    for members in target.values():
        while len(members) > r:
            drop = max(members, key=lambda n: (load[n], n))
            members.remove(drop)
            load[drop] -= 1
        while len(members) < r:
            add = least_loaded(members)
            members.append(add)
            load[add] += 1
    while True:
        busiest = max(active, key=lambda n: (load[n], -n))
        idlest = min(active, key=lambda n: (load[n], n))
        if load[busiest] - load[idlest] <= 1:
            return target
        for members in target.values():
            if busiest in members and idlest not in members:
                members[members.index(busiest)] = idlest
                load[busiest] -= 1
                load[idlest] += 1
                break
        else:
            return target


def least_crowding(zones: dict[int, str], nodes: list[int], replicas: int) -> int:
    """The fewest of a group's ``replicas`` (on distinct ``nodes``) that its most crowded zone
    can hold: the least m with sum over zones of min(zone size, m) >= replicas. 1 when there
    are at least ``replicas`` zones; at most half (no zone holds a majority) whenever the zones
    can take the replicas half each at most."""
    sizes = Counter(zone_of(zones, n) for n in nodes)
    m = 1
    while sum(min(size, m) for size in sizes.values()) < replicas:
        m += 1
    return m


def crowding(zones: dict[int, str], members: list[int]) -> int:
    """How many of ``members`` the most crowded zone holds."""
    return max(Counter(zone_of(zones, n) for n in members).values(), default=0)


ZONE_NAMES = ["m1", "m2", "m3", "rack-a", "rack.b"]


@st.composite
def zoned_nodes(draw: st.DrawFn, max_nodes: int = 12) -> list[NodeAddress]:
    """Nodes with random ids, each in one of a few zones or in none."""
    ids = draw(st.lists(st.integers(1, 60), min_size=1, max_size=max_nodes, unique=True))
    zones = st.sampled_from(["", *ZONE_NAMES])
    return [NodeAddress(i, f"10.0.0.{i}", draw(zones)) for i in ids]


def test_parse_nodes_with_zones() -> None:
    got = parse_nodes("1@127.0.0.11#m1, 2@127.0.0.12#m1,3@h.example#rack.b-2,4@h4")
    assert [n.zone for n in got] == ["m1", "m1", "rack.b-2", ""]
    assert [n.host for n in got] == ["127.0.0.11", "127.0.0.12", "h.example", "h4"]
    assert str(got[0]) == "1@127.0.0.11#m1" and str(got[3]) == "4@h4"
    assert all(NodeAddress.parse(str(n)) == n for n in got)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1@h#", "no zone after it"),
        ("1@h#a b", "A-Z a-z 0-9"),
        ("1@h#m1#m2", "A-Z a-z 0-9"),
        ("1@h#" + "z" * 65, "1 to 64"),
        ("1@h#zone/1", "A-Z a-z 0-9"),
        ("1@h#é", "A-Z a-z 0-9"),
        ("1@#m1", "id@host"),
    ],
)
def test_parse_nodes_refuses_bad_zones(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_nodes(text)


def test_zone_problem() -> None:
    assert zone_problem("") is None  # no zone
    assert zone_problem("m1") is None and zone_problem("A.b_c-9" * 9) is None  # 63 characters
    assert zone_problem("z" * 64) is None
    assert "got 'zzz" in (zone_problem("z" * 65) or "")
    assert (zone_problem("x" * 10_000) or "").endswith("...'")  # a long one is cut short
    for bad in (" ", "a\n", "a\x00", "m1,m2", "../x", "日本"):
        assert zone_problem(bad) is not None, bad


@given(
    n=st.integers(1, 12),
    groups=st.integers(1, 64),
    replicas=st.integers(1, 5),
    first_id=st.integers(1, 100),
)
def test_initial_placement_without_zones_is_the_plain_deal(
    n: int, groups: int, replicas: int, first_id: int
) -> None:
    members = nodes(n, first_id=first_id)
    p = initial_placement(members, groups, replicas)
    assert p.groups == old_initial_groups(members, groups, replicas)
    assert p.zones == {}
    # every node in a zone of its own is the same as no zones
    alone = [NodeAddress(m.node_id, m.host, f"z{m.node_id}") for m in members]
    assert initial_placement(alone, groups, replicas).groups == p.groups


@given(members=zoned_nodes(), groups=st.integers(1, 40), replicas=st.integers(1, 5))
def test_initial_placement_spreads_groups_over_zones(
    members: list[NodeAddress], groups: int, replicas: int
) -> None:
    p = initial_placement(members, groups, replicas)
    zones = {m.node_id: m.zone for m in members if m.zone}
    assert p.zones == zones
    ids = [m.node_id for m in members]
    r = min(replicas, len(ids))
    floor = least_crowding(zones, ids, r)
    for g, ms in p.groups.items():
        assert len(ms) == r == len(set(ms)) and set(ms) <= set(ids), g
        # the most crowded zone holds no more of the group than it must: so the replicas are
        # in distinct zones whenever there are at least r zones, and no zone holds a
        # majority whenever the zones can take the replicas without one
        assert crowding(zones, ms) == floor, (g, ms)
    assert initial_placement(list(reversed(members)), groups, replicas) == p
    if len({zone_of(zones, i) for i in ids}) >= r:
        assert all(len({zone_of(zones, n) for n in ms}) == r for ms in p.groups.values())
    # settled: the controller's reconciler finds nothing to move in a new cluster
    assert desired_replicas(_copy(p.groups), sorted(ids), replicas, zones) == p.groups


@pytest.mark.parametrize(
    ("zone_sizes", "replicas"), [((2, 2, 2), 3), ((3, 3, 3), 3), ((2, 2), 2), ((4, 4, 4), 3)]
)
def test_initial_placement_with_even_zones_keeps_the_load_even(
    zone_sizes: tuple[int, ...], replicas: int
) -> None:
    """Zones of one size (say, N machines of K cores, a node per core): replicas in distinct
    zones, and every node within one replica of the others, as without zones."""
    members, node_id = [], 1
    for z, size in enumerate(zone_sizes):
        for _ in range(size):
            members.append(NodeAddress(node_id, f"10.0.0.{node_id}", f"m{z}"))
            node_id += 1
    for groups in (8, 16, 64):
        p = initial_placement(members, groups, replicas)
        zones = p.zones
        assert all(crowding(zones, ms) == 1 for ms in p.groups.values())
        load = Counter(n for ms in p.groups.values() for n in ms)
        assert max(load.values()) - min(load[m.node_id] for m in members) <= 1, (groups, load)


def test_initial_placement_example_with_zones() -> None:
    """Two nodes on machine m1, one on m2, two replicas: without zones group 1 would sit on
    m1 alone ([1, 2]); with them every group has a replica on each machine."""
    plain = initial_placement(parse_nodes("1@a,2@b,3@c"), 4, 2)
    assert plain.groups[1] == [1, 2]
    p = initial_placement(parse_nodes("1@a#m1,2@b#m1,3@c#m2"), 4, 2)
    assert p.groups == {1: [1, 3], 2: [2, 3], 3: [1, 3], 4: [2, 3]}
    assert p.zones == {1: "m1", 2: "m1", 3: "m2"}


@st.composite
def cluster_change(
    draw: st.DrawFn,
) -> tuple[dict[int, list[int]], list[int], int, dict[int, str]]:
    """A map's groups (any replicas, wherever they are, members that left included) and the
    active nodes it must move to, with zones."""
    active = draw(st.lists(st.integers(1, 30), min_size=1, max_size=10, unique=True))
    everyone = sorted(set(active) | set(draw(st.lists(st.integers(1, 30), max_size=3))))
    group_count = draw(st.integers(1, 16))
    current = {
        g: draw(st.lists(st.sampled_from(everyone), max_size=6, unique=True))
        for g in range(1, group_count + 1)
    }
    zones = {n: z for n in everyone if (z := draw(st.sampled_from(["", "", *ZONE_NAMES[:3]])))}
    return current, sorted(active), draw(st.integers(1, 5)), zones


def _copy(groups: dict[int, list[int]]) -> dict[int, list[int]]:
    return {g: list(ms) for g, ms in groups.items()}


@given(cluster_change())
def test_desired_replicas_without_zones_is_unchanged(
    change: tuple[dict[int, list[int]], list[int], int, dict[int, str]],
) -> None:
    current, active, replicas, _ = change
    want = old_desired_replicas(_copy(current), active, replicas)
    assert desired_replicas(_copy(current), active, replicas) == want
    assert desired_replicas(_copy(current), active, replicas, {}) == want
    # every node in a zone of its own is the same as no zones
    alone = {n: f"z{n}" for n in active}
    assert desired_replicas(_copy(current), active, replicas, alone) == want


@given(cluster_change())
def test_desired_replicas_spread_groups_over_zones(
    change: tuple[dict[int, list[int]], list[int], int, dict[int, str]],
) -> None:
    current, active, replicas, zones = change
    before = _copy(current)
    got = desired_replicas(current, active, replicas, zones)
    assert current == before  # the caller's map is not changed
    r = min(replicas, len(active))
    floor = least_crowding(zones, active, r)
    assert sorted(got) == sorted(current)
    for g, ms in got.items():
        assert len(ms) == r == len(set(ms)) and set(ms) <= set(active), g
        assert crowding(zones, ms) == floor, (g, ms, zones)
    # deterministic, and settled: asked again about its own answer, it keeps it
    assert desired_replicas(_copy(current), active, replicas, zones) == got
    assert desired_replicas(_copy(got), active, replicas, zones) == got


@given(
    per_zone=st.integers(1, 4),
    zone_count=st.integers(1, 4),
    replicas=st.integers(1, 4),
    groups=st.dictionaries(
        st.integers(1, 24), st.lists(st.integers(1, 20), max_size=5, unique=True), max_size=24
    ),
)
def test_desired_replicas_with_even_zones_keep_the_load_even(
    per_zone: int, zone_count: int, replicas: int, groups: dict[int, list[int]]
) -> None:
    """Zones of one size, as many as the replicas or more (machines of K cores, a node per
    core): from any map, every group in distinct zones and every node within one replica of
    the others."""
    active = list(range(1, per_zone * zone_count + 1))
    zones = {n: f"m{n % zone_count}" for n in active}
    assume(zone_count >= min(replicas, len(active)))
    got = desired_replicas(groups, active, replicas, zones)
    assert all(crowding(zones, ms) == 1 for ms in got.values())
    load = Counter(n for ms in got.values() for n in ms)
    assert max(load[n] for n in active) - min(load[n] for n in active) <= 1, load


def test_desired_replicas_move_one_replica_off_a_crowded_machine() -> None:
    """Nodes 1 and 2 on machine m1, 3 on m2: a group on [1, 2] (say, from before the zones
    were known) gets 3 in place of one of them, and nothing else moves."""
    zones = {1: "m1", 2: "m1", 3: "m2"}
    current = {1: [1, 2], 2: [2, 3], 3: [3, 1]}
    got = desired_replicas(_copy(current), [1, 2, 3], 2, zones)
    assert got[2] == [2, 3] and got[3] == [3, 1]
    assert sorted(got[1]) in ([1, 3], [2, 3])
    assert all(crowding(zones, ms) == 1 for ms in got.values())


def test_desired_replicas_spread_over_a_zone_that_joins() -> None:
    """Three nodes on m1 and m2 (m1 holding two of each group), replicas 3; a node on m3
    joins: every group moves one replica of m1 to it."""
    zones = {1: "m1", 2: "m1", 3: "m2", 4: "m3"}
    current = {g: [1, 2, 3] for g in range(1, 5)}
    got = desired_replicas(_copy(current), [1, 2, 3, 4], 3, zones)
    for ms in got.values():
        assert 4 in ms and 3 in ms and len({1, 2} & set(ms)) == 1
    load = Counter(n for ms in got.values() for n in ms)
    assert load[1] == load[2] == 2  # the m1 nodes share what is left of m1's part
