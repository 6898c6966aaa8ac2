"""``/route`` and ``/route/batch`` on a real three-node cluster: every node gives a uid the
same node, users spread over the nodes, each node's external address is what is handed out,
and a node that stops moves only its own users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cluster, eventually

UIDS = [f"r{i}" for i in range(300)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, 3)
    for i, proc in c.nodes.items():
        proc.env["RAFTCHAT_GATEWAY_EXTERNAL_TCP_ADDR"] = f"node{i}.example.com:5100"
        proc.env["RAFTCHAT_GATEWAY_EXTERNAL_WS_ADDR"] = f"wss://node{i}.example.com/ws"
    c.start()
    try:
        yield c
    finally:
        c.stop()


def batch(cluster: Cluster, via: int, intranet: int = 0) -> dict[str, str]:
    """uid -> tcp_addr, from one node's /route/batch."""
    resp = cluster.api(via).http.post(f"/route/batch?intranet={intranet}", json=UIDS)
    assert resp.status_code == 200, resp.text
    return {u: group["tcp_addr"] for group in resp.json() for u in group["uids"]}


def test_route_spreads_users_stably_over_the_live_nodes(cluster: Cluster) -> None:
    external = {f"node{i}.example.com:5100" for i in (1, 2, 3)}
    # Every node knows every other's addresses once it has heard from them.
    for via in (1, 2, 3):  # each node learns the others' addresses on its own
        eventually(
            lambda via=via: set(batch(cluster, via).values()) == external,  # type: ignore[misc]
            what=f"all nodes handed out by node {via}",
        )
    first = batch(cluster, 1)
    assert batch(cluster, 2) == first and batch(cluster, 3) == first
    counts = {a: sum(1 for v in first.values() if v == a) for a in external}
    assert all(counts[a] > 50 for a in external), counts
    one = cluster.api(3).http.get("/route", params={"uid": UIDS[0]}).json()
    assert one["tcp_addr"] == first[UIDS[0]]
    assert one["ws_addr"] == "wss://" + first[UIDS[0]].replace(":5100", "/ws")
    # intranet=1: the bound addresses instead.
    inside = batch(cluster, 1, intranet=1)
    assert set(inside.values()) == {f"{h}:5100" for h in cluster.hosts.values()}
    # Without a uid: the node that was asked, as WuKongIM answers.
    assert cluster.api(2).http.get("/route").json()["tcp_addr"] == "node2.example.com:5100"
    bad = cluster.api(1).http.post("/route/batch", json={"uids": UIDS})
    assert bad.status_code == 400

    cluster.nodes[3].kill()
    survivors = {"node1.example.com:5100", "node2.example.com:5100"}
    for via in (1, 2):  # each node notices on its own
        eventually(
            lambda via=via: set(batch(cluster, via).values()) == survivors,  # type: ignore[misc]
            what=f"node 3 no longer handed out by node {via}",
        )
    after = batch(cluster, 2)
    # Only node 3's users moved.
    assert all(after[u] == first[u] for u in UIDS if first[u] != "node3.example.com:5100")
