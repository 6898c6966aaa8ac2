"""Membership under load: a fourth node joins and takes replicas and leaderships; a node leaves
and every slot group returns to three replicas; nothing acknowledged is lost. Zones: members'
zones reach the cluster map, and the groups spread over them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from launcher.devcluster import NodeProcess, node_env
from tests.conftest import ADMIN_TOKEN, Cluster, eventually, fresh_host
from tests.integration.test_cluster import Sender, check_log, pick_channel
from tests.integration.test_datadir_identity import identity


def data_groups(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for g in status["groups"] if g["group"] != 0]


GROUPS = 4


@pytest.mark.parametrize("departure", ["leave", "dead"])
def test_join_then_leave_under_load(tmp_path: Path, departure: str) -> None:
    """``dead``: node 1 is killed first, then removed; its replicas are rebuilt from the others."""
    # The Sender outpaces the default per-channel rate limit; membership is what is tested.
    # Four slot groups: one for each node once node 4 is in, so it has a leadership to take.
    cluster = Cluster(tmp_path, 3, messages__group_rate_limit=0, cluster__groups=GROUPS)
    cluster.start()
    joiner: NodeProcess | None = None
    try:
        channel = pick_channel(cluster)
        cluster.api(1).ok(
            "/channel", {"channel_id": channel, "channel_type": 2, "subscribers": ["writer"]}
        )
        sender = Sender(cluster, channel, nodes=[2, 3])
        sender.start()
        sender.wait_for(20)

        # --- a fourth node joins through node 1 -------------------------------------------
        host4 = fresh_host()
        env = node_env(
            4,
            host4,
            tmp_path / "node4",
            {
                "RAFTCHAT_CLUSTER_JOIN": cluster.hosts[1],
                "RAFTCHAT_CLUSTER_PASSWORD": "test-cluster-secret",
                "RAFTCHAT_AUTH_ADMIN_TOKEN": ADMIN_TOKEN,  # as every member
                "RAFTCHAT_LOG_FORMAT": "text",
                "RAFTCHAT_MESSAGES_GROUP_RATE_LIMIT": "0",
                "RAFTCHAT_CLUSTER_GROUPS": str(GROUPS),
                "RAFTCHAT_NODE_ZONE": "machine-4",  # the join brings it to the map
            },
        )
        joiner = NodeProcess(4, tmp_path / "node4", env, tmp_path / "node4.log")
        joiner.start(timeout_s=60)
        cluster.hosts[4] = host4
        cluster.nodes[4] = joiner
        # It learnt the cluster's id from the member that admitted it (node/identity.py).
        ids = [identity(tmp_path / f"node{n}") for n in (1, 4)]
        assert ids[0]["cluster_id"] == ids[1]["cluster_id"] and ids[1]["multi_node"] is True
        eventually(
            lambda: cluster.status(2)["zones"] == {"4": "machine-4"},
            what="the joiner's zone in the map",
        )

        def balanced_with_four() -> bool:
            groups = data_groups(cluster.status(2))
            load = Counter(n for g in groups for n in g["replicas"])
            # Within one replica of every other node: its share of all the replicas, rounded down.
            share = 3 * len(groups) // len(load)
            return all(len(g["replicas"]) == 3 for g in groups) and load[4] >= share

        eventually(balanced_with_four, timeout_s=120, what="node 4 holds its share of replicas")
        eventually(
            lambda: any(g.get("is_leader") for g in data_groups(cluster.status(4))),
            timeout_s=60,
            what="node 4 leads a slot group",
        )
        sender.wait_for(len(sender.acked) + 20)

        # --- node 1 leaves (or dies and is removed) --------------------------------------------
        if departure == "dead":
            cluster.nodes[1].kill()
        cluster.api(2).ok("/cluster/leave", {"node_id": 1})

        def node1_gone() -> bool:
            st = cluster.status(2)
            groups = data_groups(st)
            return "1" not in st["nodes"] and all(
                len(g["replicas"]) == 3 and 1 not in g["replicas"] for g in groups
            )

        eventually(node1_gone, timeout_s=180, what="node 1 drained and removed")
        sender.wait_for(len(sender.acked) + 20)
        sender.stop.set()
        sender.join(30)
        cluster.nodes[1].stop()
        # Messages from before the join, between, and after the leave: all there, once, in
        # order, identical through every remaining node.
        check_log(cluster, channel, sender.acked)
    finally:
        cluster.stop()


def test_groups_spread_over_the_zones_of_their_members(tmp_path: Path) -> None:
    """Nodes 1 and 2 on machine m1, node 3 on m2, two replicas per group. Node 1's zone is in
    cluster.nodes (``1@host#m1``), so the first map knows it; nodes 2 and 3 name theirs in
    node.zone only, which reaches the map once each node has asked for it. Without zones, three
    of the eight groups (the plain deal's [1, 2]) would sit on m1 alone, and m1 going down would
    take both of their replicas; with them each group gets a replica on each machine."""
    # Eight groups: the plain deal would put three of them on m1 alone.
    cluster = Cluster(tmp_path, 3, cluster__replicas=2, cluster__groups=8)
    members = ",".join(f"{n}@{h}" + ("#m1" if n == 1 else "") for n, h in cluster.hosts.items())
    for n, zone in {1: "m1", 2: "m1", 3: "m2"}.items():
        cluster.nodes[n].env.update({"RAFTCHAT_CLUSTER_NODES": members, "RAFTCHAT_NODE_ZONE": zone})
    cluster.start()
    try:
        want = {"1": "m1", "2": "m1", "3": "m2"}
        eventually(lambda: cluster.status(3)["zones"] == want, what="every zone in the map")

        def settled() -> bool:
            # One reading of the map: a move adds a replica before it drops one, so a reading
            # between two moves may show a group with three.
            groups = data_groups(cluster.status(2))
            load = Counter(n for g in groups for n in g["replicas"])
            return (
                len(groups) == 8
                and all(len(g["replicas"]) == 2 and 3 in g["replicas"] for g in groups)
                and load == {1: 4, 2: 4, 3: 8}  # the m1 nodes share what is m1's
            )

        eventually(settled, timeout_s=60, what="a replica of every group on each machine")
        st = cluster.status(2)
        assert st["zones"] == want
        for g in data_groups(st):
            assert sorted(want[str(n)] for n in g["replicas"]) == ["m1", "m2"], g
    finally:
        cluster.stop()
