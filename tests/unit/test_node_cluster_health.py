"""The table ``raftchat cluster status`` prints: a zone column when members have zones."""

from __future__ import annotations

from typing import Any

from node.cluster_health import OK, UNREACHABLE, NodeHealth, render

STATUS: dict[str, Any] = {
    "node_id": 1,
    "placement_version": 3,
    "nodes": {"1": "10.0.0.1", "2": "10.0.0.2", "3": "10.0.0.3"},
    "groups": [{"group": 1, "replicas": [1, 2], "leader": 1}],
}
HEALTH = {
    1: NodeHealth(1, "http://10.0.0.1:5001", OK),
    2: NodeHealth(2, "http://10.0.0.2:5001", OK),
    3: NodeHealth(3, "http://10.0.0.3:5001", UNREACHABLE, "connection refused"),
}


def node_lines(status: dict[str, Any]) -> list[list[str]]:
    return [line.split() for line in render(status, HEALTH)[1:5]]


def test_without_zones_the_table_has_no_zone_column() -> None:
    assert (
        node_lines({**STATUS, "zones": {}})
        == node_lines(STATUS)
        == [
            ["node", "address", "health", "detail"],
            ["1", "10.0.0.1", "ok"],
            ["2", "10.0.0.2", "ok"],
            ["3", "10.0.0.3", "unreachable", "connection", "refused"],
        ]
    )


def test_zones_get_a_column() -> None:
    assert node_lines({**STATUS, "zones": {"1": "m1", "2": "m1"}}) == [
        ["node", "address", "zone", "health", "detail"],
        ["1", "10.0.0.1", "m1", "ok"],
        ["2", "10.0.0.2", "m1", "ok"],
        ["3", "10.0.0.3", "-", "unreachable", "connection", "refused"],
    ]
