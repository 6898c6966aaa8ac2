"""Where data lives: 256 fixed hash slots, a versioned slot table onto S slot groups, and the
nodes that replicate each group. Pure functions and plain data; the controller replicates it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

HASH_SLOTS = 256


def slot_of(key: str) -> int:
    """The hash slot of a canonical channel id or a uid."""
    return zlib.crc32(key.encode()) % HASH_SLOTS


@dataclass(frozen=True)
class NodeAddress:
    node_id: int
    host: str

    @classmethod
    def parse(cls, text: str) -> NodeAddress:
        """``"2@127.0.0.12"``."""
        ident, sep, host = text.strip().partition("@")
        if not sep or not ident.isdigit() or not host:
            raise ValueError(f"a cluster node is written id@host, got {text!r}")
        return cls(int(ident), host)

    def __str__(self) -> str:
        return f"{self.node_id}@{self.host}"


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

    def group_of(self, key: str) -> int:
        return self.slot_table[slot_of(key)]

    def replicas(self, group: int) -> list[int]:
        return self.groups.get(group, [])

    def groups_of_node(self, node_id: int) -> list[int]:
        return sorted(g for g, members in self.groups.items() if node_id in members)


def initial_placement(nodes: list[NodeAddress], group_count: int, replicas: int) -> Placement:
    """Deterministic bootstrap map: every initial node computes the same one.

    Replica i of group g goes to node ``((g - 1) * r + i) mod N``: consecutive, so distinct,
    and dealt round-robin, so every node holds within one replica of every other.
    """
    if not nodes:
        raise ValueError("a cluster needs at least one node")
    ordered = sorted(nodes, key=lambda n: n.node_id)
    r = min(replicas, len(ordered))
    groups = {
        g: [ordered[((g - 1) * r + i) % len(ordered)].node_id for i in range(r)]
        for g in range(1, group_count + 1)
    }
    table = [1 + (s % group_count) for s in range(HASH_SLOTS)]
    return Placement(1, table, groups, {n.node_id: n.host for n in ordered})


def to_json(p: Placement) -> dict[str, object]:
    return {
        "version": p.version,
        "slot_table": p.slot_table,
        "groups": {str(g): r for g, r in sorted(p.groups.items())},
        "nodes": {str(n): h for n, h in sorted(p.nodes.items())},
        "leaving": sorted(p.leaving),
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
    )


def desired_replicas(
    current: dict[int, list[int]], active: list[int], replicas: int
) -> dict[int, list[int]]:
    """Where every group's replicas should be: on active nodes only, ``replicas`` of them (or
    every active node, when fewer), spread so that no node holds more than one group more than
    another. Replicas that may stay, stay (moves copy data), so the result is a small change of
    ``current``. Deterministic: every controller computes the same answer."""
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
    # Even out: move a replica from the busiest node to the idlest while that helps.
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
