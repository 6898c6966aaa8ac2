"""Whether this node can serve clients now (``GET /readyz``; ``/healthz`` only says the process
answers). Ready means, for every Raft group this node replicates (the controller group and its
slot groups):

* the replica knows a leader: requests for the group can be placed;
* it is connected to a majority of the group: a leader cut off from the others has not yet
  noticed, and a follower's leader may be a stale one;
* it has applied all but ``MAX_BEHIND`` entries of what the leader committed: reads and
  deliveries on this node are not far behind.

The controller group being ready is what "the controller is reachable" means: it holds the
cluster map, and every node replicates it. Each check reads what the replica already knows;
nothing is sent to the network, so a load balancer may call it as often as it likes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

MAX_BEHIND = 100
"""Raft entries a replica may trail its leader's commit index and still count as caught up.
A send batch is one entry; a follower in step trails by the few in flight, a replica that is
catching up from a log or a snapshot by thousands."""


class Replica(Protocol):
    def leader_id(self) -> int | None: ...
    def has_quorum(self) -> bool: ...
    def behind(self) -> int: ...


def _name(group: int) -> str:
    return "the controller group" if group == 0 else f"slot group {group}"


def not_ready(replicas: Mapping[int, Replica]) -> list[str]:
    """Why this node is not ready, one line per problem; empty when it is ready."""
    reasons = []
    if 0 not in replicas:
        reasons.append("the controller group is not open on this node yet")
    for group, replica in sorted(replicas.items()):
        if replica.leader_id() is None:
            reasons.append(f"{_name(group)} has no leader")
        elif not replica.has_quorum():
            reasons.append(f"{_name(group)}: this replica is not connected to a majority")
        behind = replica.behind()
        if behind > MAX_BEHIND:
            reasons.append(f"{_name(group)}: this replica is {behind} entries behind the leader")
    return reasons
