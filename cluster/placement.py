"""Where data lives: 256 fixed hash slots, a versioned slot table onto S slot groups, and the
nodes that replicate each group. Pure functions and plain data; the controller replicates it.

Zones: a member may name the zone it runs in (``node.zone``, typically its machine when several
nodes share one). Each group's replicas are spread over as many zones as there are, so that one
machine going down takes at most the share of a group that cannot be avoided; a member without
a zone counts as a zone of its own, so without zones placement is what it always was
(``docs/adr/025-zones.md``).
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

HASH_SLOTS = 256

_ZONE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def zone_problem(zone: str) -> str | None:
    """Why ``zone`` cannot name a zone; None when it can ("" is no zone, and can)."""
    if zone == "" or _ZONE.fullmatch(zone):
        return None
    shown = zone if len(zone) <= 80 else zone[:80] + "..."
    return f"a zone is 1 to 64 of the characters A-Z a-z 0-9 . _ -, got {shown!r}"


def slot_of(key: str) -> int:
    """The hash slot of a canonical channel id or a uid."""
    return zlib.crc32(key.encode()) % HASH_SLOTS


@dataclass(frozen=True)
class NodeAddress:
    node_id: int
    host: str
    zone: str = ""
    """"": no zone given."""

    @classmethod
    def parse(cls, text: str) -> NodeAddress:
        """``"2@127.0.0.12"``, or with a zone ``"2@127.0.0.12#rack-a"``."""
        ident, sep, rest = text.strip().partition("@")
        host, has_zone, zone = rest.partition("#")
        if not sep or not ident.isdigit() or not host:
            raise ValueError(f"a cluster node is written id@host or id@host#zone, got {text!r}")
        if has_zone and not zone:
            raise ValueError(f"{text.strip()!r} has a '#' but no zone after it")
        problem = zone_problem(zone)
        if problem is not None:
            raise ValueError(f"node {ident}: {problem}")
        return cls(int(ident), host, zone)

    def __str__(self) -> str:
        return f"{self.node_id}@{self.host}" + (f"#{self.zone}" if self.zone else "")


def parse_nodes(text: str) -> list[NodeAddress]:
    nodes = [NodeAddress.parse(part) for part in text.split(",") if part.strip()]
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate node ids in {text!r}")
    return nodes


@dataclass
class Placement:
    """The cluster map: which group owns each slot and which nodes replicate each group."""

    version: int
    slot_table: list[int]
    """``slot_table[slot]`` = group id (1-based)."""
    groups: dict[int, list[int]]
    """group id -> node ids of its replicas."""
    nodes: dict[int, str] = field(default_factory=dict)
    """node id -> host."""
    leaving: list[int] = field(default_factory=list)
    """Members whose replicas are being moved away before they are removed."""
    zones: dict[int, str] = field(default_factory=dict)
    """node id -> zone, for the members that gave one."""

    def set_zone(self, node_id: int, zone: str) -> None:
        if zone:
            self.zones[node_id] = zone
        else:
            self.zones.pop(node_id, None)

    def group_of(self, key: str) -> int:
        return self.slot_table[slot_of(key)]

    def replicas(self, group: int) -> list[int]:
        return self.groups.get(group, [])

    def groups_of_node(self, node_id: int) -> list[int]:
        return sorted(g for g, members in self.groups.items() if node_id in members)


def initial_placement(nodes: list[NodeAddress], group_count: int, replicas: int) -> Placement:
    """Deterministic bootstrap map: every initial node computes the same one.

    The nodes are dealt round-robin in id order, each group taking the next ``r`` of them:
    replica i of group g goes to node ``((g - 1) * r + i) mod N``, so replicas are distinct and
    every node holds within one replica of every other. With zones, a group takes instead a
    node of the zone it holds fewest replicas of, then the least loaded, then the next in the
    deal: replicas spread over as many zones as there are; then the load is evened out as far
    as the zones allow. Without zones every node not yet in the group is alone in its zone, and
    the deal's next node is the least loaded, so this is the plain deal exactly.
    """
    if not nodes:
        raise ValueError("a cluster needs at least one node")
    ordered = sorted(nodes, key=lambda n: n.node_id)
    ids = [n.node_id for n in ordered]
    zones = {n.node_id: n.zone for n in ordered if n.zone}
    r = min(replicas, len(ordered))
    load = dict.fromkeys(ids, 0)
    cursor = 0
    groups: dict[int, list[int]] = {}
    for g in range(1, group_count + 1):
        members: list[int] = []
        held: Counter[tuple[str, int]] = Counter()
        for _ in range(r):
            pick = min(
                (i for i, n in enumerate(ids) if n not in members),
                key=lambda i: (
                    held[zone_of(zones, ids[i])],
                    load[ids[i]],
                    (i - cursor) % len(ids),
                ),
            )
            node = ids[pick]
            members.append(node)
            held[zone_of(zones, node)] += 1
            load[node] += 1
            cursor = pick + 1
        groups[g] = members
    # Zones of unequal sizes can leave the deal's load uneven: evened out here as the
    # reconciler would (``desired_replicas``), so that it finds nothing to move at the start.
    _even_out(groups, ids, load, lambda n: zone_of(zones, n))
    table = [1 + (s % group_count) for s in range(HASH_SLOTS)]
    return Placement(1, table, groups, {n.node_id: n.host for n in ordered}, zones=zones)


def zone_of(zones: dict[int, str], node_id: int) -> tuple[str, int]:
    """The zone ``node_id`` counts in: its own when it gave none."""
    zone = zones.get(node_id, "")
    return (zone, 0) if zone else ("", node_id)


def to_json(p: Placement) -> dict[str, object]:
    return {
        "version": p.version,
        "slot_table": p.slot_table,
        "groups": {str(g): r for g, r in sorted(p.groups.items())},
        "nodes": {str(n): h for n, h in sorted(p.nodes.items())},
        "leaving": sorted(p.leaving),
        "zones": {str(n): z for n, z in sorted(p.zones.items())},
    }


def from_json(d: dict[str, object]) -> Placement:
    groups = d["groups"]
    nodes = d["nodes"]
    assert isinstance(groups, dict) and isinstance(nodes, dict)
    return Placement(
        int(d["version"]),  # type: ignore[call-overload]
        [int(x) for x in d["slot_table"]],  # type: ignore[attr-defined]
        {int(g): [int(n) for n in r] for g, r in groups.items()},
        {int(n): str(h) for n, h in nodes.items()},
        [int(n) for n in d.get("leaving", [])],  # type: ignore[attr-defined]
        # A map written before zones existed has none.
        {int(n): str(z) for n, z in d.get("zones", {}).items() if z},  # type: ignore[attr-defined]
    )


def desired_replicas(
    current: dict[int, list[int]],
    active: list[int],
    replicas: int,
    zones: dict[int, str] | None = None,
) -> dict[int, list[int]]:
    """Where every group's replicas should be: on active nodes only, ``replicas`` of them (or
    every active node, when fewer), spread over as many ``zones`` as can be (the most crowded
    zone of a group holds no more of its replicas than it must), and then so that no node
    holds more than one group more than another, as far as the zones allow. Replicas that may
    stay, stay (moves copy data), so the result is a small change of ``current``.
    Deterministic: every controller computes the same answer.

    A node without a zone counts as a zone of its own: without zones every zone rule below
    holds of any set of distinct nodes, and the result is that of the rules for load alone."""
    if not active:
        return {g: [] for g in current}
    zones = zones or {}
    r = min(replicas, len(active))
    target = {g: [n for n in members if n in active] for g, members in sorted(current.items())}
    load = {n: 0 for n in active}
    for members in target.values():
        for n in members:
            load[n] += 1

    def zone(n: int) -> tuple[str, int]:
        return zone_of(zones, n)

    def held(members: list[int]) -> Counter[tuple[str, int]]:
        return Counter(zone(n) for n in members)

    def first_out(members: list[int]) -> int:
        """The replica to give up: of the most crowded zone, then the busiest node."""
        h = held(members)
        return max(members, key=lambda n: (h[zone(n)], load[n], n))

    def first_in(members: list[int]) -> int | None:
        """The node to add: of the zone the group holds least of, then the idlest node."""
        h = held(members)
        return min(
            (n for n in active if n not in members),
            key=lambda n: (h[zone(n)], load[n], n),
            default=None,
        )

    def swap(members: list[int], out: int, into: int) -> None:
        members[members.index(out)] = into
        load[out] -= 1
        load[into] += 1

    for members in target.values():
        while len(members) > r:
            drop = first_out(members)
            members.remove(drop)
            load[drop] -= 1
        while len(members) < r:
            add = first_in(members)
            assert add is not None  # r <= len(active)
            members.append(add)
            load[add] += 1
        # Spread over zones: a replica moves from the most crowded zone to one that holds at
        # least two fewer (zones learnt late, or a zone that joined). Never when each replica
        # is alone in its zone, as always without zones (a check that keeps the settled
        # reconciler round, every second, as cheap as it was).
        while max(held(members).values(), default=0) > 1:
            out, into = first_out(members), first_in(members)
            h = held(members)
            if into is None or h[zone(into)] + 1 >= h[zone(out)]:
                break
            swap(members, out, into)
    _even_out(target, active, load, zone)
    return target


def _even_out(
    target: dict[int, list[int]],
    active: list[int],
    load: dict[int, int],
    zone: Callable[[int], tuple[str, int]],
) -> None:
    """Move replicas from the busiest node to the idlest while that helps, never spreading a
    group worse over zones. Without zones the busiest and the idlest always have such a move
    (the busiest holds a group the idlest does not), and nothing else is tried. With zones it
    may be barred: then the next pair is tried, and a pair in two zones may move through
    zone-mates: the replica crosses between two other nodes of those zones, and each end
    evens out inside its own zone, where a move never spreads a group worse."""
    held = {g: Counter(zone(n) for n in members) for g, members in target.items()}
    mates: dict[tuple[str, int], list[int]] = {}
    for n in sorted(active):
        mates.setdefault(zone(n), []).append(n)

    def swap(g: int, out: int, into: int) -> None:
        members = target[g]
        members[members.index(out)] = into
        held[g][zone(out)] -= 1
        held[g][zone(into)] += 1
        load[out] -= 1
        load[into] += 1

    def move(out: int, into: int) -> int | None:
        """The first group whose replica on ``out`` may move to ``into``."""
        same = zone(out) == zone(into)
        for g, members in target.items():
            spread_kept = same or held[g][zone(into)] < held[g][zone(out)]
            if out in members and into not in members and spread_kept:
                return g
        return None

    def through_mates(busiest: int, idlest: int) -> bool:
        zb, zi = zone(busiest), zone(idlest)
        if zb == zi or not any(h[zi] < h[zb] for h in held.values()):
            return False  # no group may move a replica between the two zones at all
        for b in mates[zb]:
            for i in mates[zi]:
                cross = move(b, i)
                if cross is None:
                    continue
                # Both found before the crossing changes anything; neither is its group (it
                # holds b, which the first lacks, and lacks i, which the second holds).
                first = move(busiest, b) if b != busiest else None
                last = move(i, idlest) if i != idlest else None
                if (b != busiest and first is None) or (i != idlest and last is None):
                    continue
                swap(cross, b, i)
                if first is not None:
                    swap(first, busiest, b)
                if last is not None:
                    swap(last, i, idlest)
                return True
        return False

    def one_move() -> bool:
        by_load = sorted(active, key=lambda n: (load[n], n))
        for busiest in sorted(active, key=lambda n: (load[n], -n), reverse=True):
            for idlest in by_load:
                if load[busiest] - load[idlest] <= 1:
                    break
                g = move(busiest, idlest)
                if g is not None:
                    swap(g, busiest, idlest)
                    return True
                if through_mates(busiest, idlest):
                    return True
        return False

    while one_move():
        pass
