"""A node never opens another node's or another cluster's data directory.

The collision an operator met: a three-node cluster ran and stopped; a node started without
a cluster configuration on node 1's directory opened it as a one-node cluster and took writes,
and after the cluster's next start one group's replicas disagreed forever. Now such a start is
refused in one line with exit code 2, and so are starts as another node id or as a member of
another cluster; the cluster itself restarts on its directories as before.
"""

from __future__ import annotations

import json
from pathlib import Path

from launcher.devcluster import node_env
from tests.conftest import Cluster, fresh_host, fresh_hosts
from tests.integration.test_startup_failures import REFUSED, Exit, run_to_exit

PASSWORD = "test-cluster-secret"  # what tests.conftest.Cluster uses


def identity(data: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((data / "identity.json").read_text())
    return loaded


def member_env(cluster: Cluster, node_id: int, data: Path, **changes: str) -> dict[str, str]:
    members = ",".join(f"{n}@{h}" for n, h in sorted(cluster.hosts.items()))
    settings = {
        "RAFTCHAT_CLUSTER_NODES": members,
        "RAFTCHAT_CLUSTER_PASSWORD": PASSWORD,
        "RAFTCHAT_LOG_FORMAT": "text",
        **changes,
    }
    return node_env(node_id, cluster.hosts[node_id], data, settings)


def assert_refused(result: Exit, data: Path, because: str) -> None:
    assert result.code == REFUSED, result.stderr
    assert len(result.stderr) == 1, result.stderr
    line = result.stderr[0]
    assert line.startswith(f"raftchat: data directory {data} belongs to node 1 of a multi-node")
    assert because in line, line


def test_a_stopped_clusters_directory_refuses_other_nodes_and_clusters(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3)
    cluster.start()
    try:
        api = cluster.api(1)
        api.ok("/channel", {"channel_id": "team", "channel_type": 2, "subscribers": ["alice"]})
        send = {"from_uid": "alice", "channel_id": "team", "channel_type": 2, "payload": "aGk="}
        api.ok("/message/send", send)
    finally:
        cluster.stop()
    node1 = tmp_path / "node1"

    # The collision: no cluster configuration, node 1's directory.
    lone = node_env(1, fresh_host(), node1, {"RAFTCHAT_LOG_FORMAT": "text"})
    assert_refused(run_to_exit(lone), node1, "refusing to start it as a lone node")
    cluster_id = identity(node1)["cluster_id"]
    assert identity(tmp_path / "node2")["cluster_id"] == cluster_id  # computed alike, apart
    # Another node id on it.
    as_node2 = member_env(cluster, 2, node1)
    assert_refused(run_to_exit(as_node2), node1, "refusing to start it as node 2")
    # Node 1 of another cluster: another password, or other members.
    other_password = member_env(cluster, 1, node1, RAFTCHAT_CLUSTER_PASSWORD="other-secret")
    assert_refused(run_to_exit(other_password), node1, "describe another cluster")
    two, three = fresh_hosts(2)
    other_members = f"1@{cluster.hosts[1]},2@{two},3@{three}"
    elsewhere = member_env(cluster, 1, node1, RAFTCHAT_CLUSTER_NODES=other_members)
    assert_refused(run_to_exit(elsewhere), node1, "describe another cluster")
    assert identity(node1)["cluster_id"] == cluster_id  # refusals change nothing

    # Its own members start on it as before, with the data they had.
    cluster.start()
    try:
        answer = cluster.api(2).ok(
            "/channel/messagesync",
            {"login_uid": "alice", "channel_id": "team", "channel_type": 2, "limit": 10},
        )
        assert [m["payload"] for m in answer["messages"]] == ["aGk="]
    finally:
        cluster.stop()
