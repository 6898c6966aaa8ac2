"""Forged membership: the HTTP admin routes must not admit a node, a node that proves the
password must still join at its own address, and leaves must not shrink the cluster below
``cluster.replicas``.

The attack: ``POST /cluster/join`` of a made-up node 9 answered 409, yet node 9 was admitted;
the members then called the made-up host with the peer credential; ``/cluster/leave`` of node 3
passed the replica guard (node 9 counted as a member), and a forced leave of 9 left a
three-node cluster with two members.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from cluster.bridge import AUTH_METADATA_KEY
from cluster.grpc_client import GrpcCallError, GrpcClient
from cluster.peerauth import PeerKeys
from launcher.devcluster import GRPC_PORT, NodeProcess, node_env
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.raftchat.peer.v1 import peer_pb2_grpc as pb_grpc
from tests.conftest import Cluster, eventually
from tests.integration.test_cluster_hostile import Tap, log_lines, raw_call

PASSWORD = "test-cluster-secret"  # what tests/conftest.py gives its clusters


class Listener:
    """A gRPC server at the made-up node's address that records every call it receives."""

    def __init__(self, host: str) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.called = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((self,))
        self.server.add_insecure_port(f"{host}:{GRPC_PORT}")

    def service(self, details: Any) -> grpc.RpcMethodHandler:
        def answer(_request: bytes, context: grpc.ServicerContext) -> bytes:
            metadata = {k: str(v) for k, v in details.invocation_metadata}
            self.calls.append((details.method, metadata))
            self.called.set()
            context.abort(grpc.StatusCode.UNAVAILABLE, "not a node")
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)

    def credentials_seen(self) -> list[str]:
        return [m for m, md in self.calls if any(k.startswith(AUTH_METADATA_KEY) for k in md)]


@pytest.fixture
def cluster3_with_listener(tmp_path: Path) -> Iterator[tuple[Cluster, Listener, str]]:
    cluster = Cluster(tmp_path, 3)
    host9 = cluster.hosts[1].rsplit(".", 1)[0] + ".109"
    listener = Listener(host9)
    listener.server.start()
    cluster.start()
    try:
        yield cluster, listener, host9
    finally:
        cluster.stop()
        listener.server.stop(0)


def members(cluster: Cluster) -> dict[str, str]:
    return dict(cluster.status(1)["nodes"])


def test_http_join_of_a_made_up_node_admits_nothing(
    cluster3_with_listener: tuple[Cluster, Listener, str],
) -> None:
    cluster, listener, host9 = cluster3_with_listener
    before = cluster.status(1)
    answer = cluster.api(2).post("/cluster/join", {"node_id": 9, "host": host9})
    assert answer.status_code != 200, answer.text
    # Nor a host that no node can have (the wildcard address).
    wildcard = cluster.api(1).post("/cluster/join", {"node_id": 8, "host": "0.0.0.0"})
    assert wildcard.status_code != 200, wildcard.text
    # The map is unchanged on every member, and nobody calls the made-up host: the
    # reconciler runs every second, so three seconds of silence cover its rounds.
    for n in cluster.hosts:
        after = cluster.status(n)
        assert after["nodes"] == before["nodes"], (n, after["nodes"])
        assert after["placement_version"] == before["placement_version"]
    assert not listener.called.wait(3.0), listener.calls
    assert listener.credentials_seen() == []


def test_leaves_cannot_take_the_cluster_below_its_replicas(
    cluster3_with_listener: tuple[Cluster, Listener, str],
) -> None:
    """The attack's three POSTs in a row: whatever the join answers, the leave of node 3 is
    refused, and the cluster keeps its three members."""
    cluster, _listener, host9 = cluster3_with_listener
    cluster.api(2).post("/cluster/join", {"node_id": 9, "host": host9})
    leave3 = cluster.api(1).post("/cluster/leave", {"node_id": 3})
    assert leave3.status_code == 409, leave3.text
    assert "cluster.replicas" in leave3.json()["msg"]
    cluster.api(1).post("/cluster/leave", {"node_id": 9, "force": 1})
    eventually(lambda: "9" not in members(cluster), timeout_s=30, what="node 9 not in the map")
    assert sorted(members(cluster)) == ["1", "2", "3"]


def signed_join(seed: str, node_id: int, host: str, password: str = PASSWORD) -> dict[str, Any]:
    """The join a node started with ``cluster.join`` sends, signed with ``password`` (from
    this process: its calls leave from 127.0.0.1)."""
    request = json.dumps({"op": "join", "node_id": node_id, "host": host}).encode()

    async def call() -> dict[str, Any]:
        client = GrpcClient(f"{seed}:{GRPC_PORT}", pb_grpc.PeerStub, PeerKeys.of(password))
        try:
            raw = await client.call("Admin", pb.AdminRequest(request=request), 30.0)
        finally:
            client.close()
        return dict(json.loads(raw.reply))

    return trio.run(call)


def test_a_join_with_the_password_is_still_refused_at_an_address_not_its_own(
    cluster3_with_listener: tuple[Cluster, Listener, str],
) -> None:
    """Proving the password is not enough: the node must join at the address its call came
    from, at no member's address, and not as a member at another one. Each refusal says why,
    changes nothing, and the members never call the address named."""
    cluster, listener, _host9 = cluster3_with_listener
    before = cluster.status(1)
    cases = [
        # Not loopback: the test's call comes from 127.0.0.1, so it is not that machine's.
        (9, "192.0.2.77", "but its call came from 127.0.0.1"),
        (9, cluster.hosts[2], "is the address of member 2"),
        (1, cluster.hosts[1].rsplit(".", 1)[0] + ".109", "already a member at"),
        (9, "0.0.0.0", "wildcard"),
        (9, "224.0.0.1", "multicast"),
    ]
    for node_id, host, why in cases:
        reply = signed_join(cluster.hosts[1 + node_id % 3], node_id, host)
        assert reply.get("refused") is True and why in reply["error"], (host, reply)
    for n in cluster.hosts:
        after = cluster.status(n)
        assert after["nodes"] == before["nodes"]
        assert after["placement_version"] == before["placement_version"]
    assert not listener.called.wait(2.0), listener.calls


def test_a_node_is_admitted_only_with_the_password_and_its_join_cannot_be_replayed(
    cluster3_with_listener: tuple[Cluster, Listener, str], tmp_path: Path
) -> None:
    """A join of node 4 signed with a guessed password is refused (UNAUTHENTICATED) and changes
    nothing. Then the real node 4, which has the password, joins through a tap that records
    its call on the way to node 1 and is admitted. That call, played to node 1 again as it
    was (metadata and body), is refused as a replay; with its body altered to admit another
    node at the tap's address, it fails the MAC."""
    cluster, _listener, _host9 = cluster3_with_listener
    base = cluster.hosts[1].rsplit(".", 1)[0]
    host4, tap_host = f"{base}.104", f"{base}.108"
    before = cluster.status(1)
    with pytest.raises(GrpcCallError) as info:
        signed_join(cluster.hosts[2], 4, host4, password="a-guessed-password")
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert log_lines(cluster, 2, "peer gRPC: refused Admin from", "wrong peer credential")
    for n in cluster.hosts:
        assert cluster.status(n)["placement_version"] == before["placement_version"]
        assert "4" not in cluster.status(n)["nodes"]

    seed = f"{cluster.hosts[1]}:{GRPC_PORT}"
    tap = Tap(seed, host=tap_host, port=GRPC_PORT)
    env = node_env(
        4,
        host4,
        tmp_path / "node4",
        {
            "RAFTCHAT_CLUSTER_JOIN": tap_host,
            "RAFTCHAT_CLUSTER_PASSWORD": PASSWORD,
            "RAFTCHAT_LOG_FORMAT": "text",
        },
    )
    joiner = NodeProcess(4, tmp_path / "node4", env, tmp_path / "node4.log")
    try:
        joiner.start(timeout_s=90)
    finally:
        tap.close()
    cluster.nodes[4], cluster.hosts[4] = joiner, host4  # stopped with the cluster
    assert members(cluster)["4"] == host4

    joins = [(path, body, md) for path, body, md in tap.captured if path.endswith("/Admin")]
    assert joins and all(md for _, _, md in joins), tap.captured
    path, body, metadata = joins[-1]  # the call that was admitted
    assert json.loads(pb.AdminRequest.FromString(body).request)["op"] == "join"
    assert raw_call(seed, path, body, metadata) == grpc.StatusCode.UNAUTHENTICATED
    altered = json.dumps({"op": "join", "node_id": 5, "host": tap_host}).encode()
    forged = pb.AdminRequest(request=altered).SerializeToString()
    assert raw_call(seed, path, forged, metadata) == grpc.StatusCode.UNAUTHENTICATED
    refusals = log_lines(cluster, 1, "peer gRPC: refused Admin from")
    assert any("replayed call (nonce already seen)" in line for line in refusals), refusals
    assert sorted(members(cluster)) == ["1", "2", "3", "4"]
