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

    def group_of(self, key: str) -> int:
        return self.slot_table[slot_of(key)]

    def replicas(self, group: int) -> list[int]:
        return self.groups.get(group, [])

    def groups_of_node(self, node_id: int) -> list[int]:
        return sorted(g for g, members in self.groups.items() if node_id in members)


def initial_placement(nodes: list[NodeAddress], group_count: int, replicas: int) -> Placement:
    """Deterministic bootstrap map: every initial node computes the same one.

    Group g is replicated on ``replicas`` consecutive nodes starting at node ``g - 1``, so the
    replicas (and, after elections, the leaders) spread evenly over the nodes.
    """
    if not nodes:
        raise ValueError("a cluster needs at least one node")
    ordered = sorted(nodes, key=lambda n: n.node_id)
    r = min(replicas, len(ordered))
    groups = {
        g: [ordered[(g - 1 + i) % len(ordered)].node_id for i in range(r)]
        for g in range(1, group_count + 1)
    }
    table = [1 + (s % group_count) for s in range(HASH_SLOTS)]
    return Placement(1, table, groups, {n.node_id: n.host for n in ordered})
