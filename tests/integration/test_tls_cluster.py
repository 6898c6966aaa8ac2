"""Mutual TLS between the nodes of a real three-node cluster (``tls.ca_file``): each node has
its own certificate from a CA made by the test, with an IP SAN for its address. The cluster
elects and commits, a message crosses three nodes (forwarded to the leader and delivered over
peer gRPC), and the peer port refuses whoever comes without a certificate from that CA."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import trio

from client.wkproto import open_client
from cluster.grpc_client import GrpcCallError, GrpcClient
from cluster.grpc_tls import channel_credentials
from cluster.peerauth import PeerKeys
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.raftchat.peer.v1 import peer_pb2_grpc as pb_grpc
from tests.conftest import Cluster
from tests.integration.test_cluster import pick_channel
from tests.tlsutil import Issued, TestCA

PASSWORD = "test-cluster-secret"  # what ``Cluster`` gives its nodes


def _endpoints(
    address: str, creds: grpc.ChannelCredentials | None
) -> pb.EndpointsReply | GrpcCallError:
    async def call() -> pb.EndpointsReply:
        client = GrpcClient(address, pb_grpc.PeerStub, PeerKeys.of(PASSWORD), creds)
        try:
            return await client.call("Endpoints", pb.EndpointsRequest(), 3.0)
        finally:
            client.close()

    try:
        return trio.run(call)
    except GrpcCallError as e:
        return e


def _creds(ca: TestCA, issued: Issued | None = None) -> grpc.ChannelCredentials:
    if issued is None:
        return channel_credentials(ca.ca_file.read_bytes())
    return channel_credentials(
        ca.ca_file.read_bytes(), issued.cert.read_bytes(), issued.key.read_bytes()
    )


@pytest.fixture
def tls_cluster(tmp_path: Path) -> tuple[Cluster, TestCA]:
    ca = TestCA(tmp_path / "ca")
    cluster = Cluster(tmp_path, 3)
    for i, host in cluster.hosts.items():
        issued = ca.issue(f"node{i}", ips=[host])
        cluster.nodes[i].env.update(
            RAFTCHAT_TLS_CERT_FILE=str(issued.cert),
            RAFTCHAT_TLS_KEY_FILE=str(issued.key),
            RAFTCHAT_TLS_CA_FILE=str(ca.ca_file),
        )
    return cluster, ca


def test_a_cluster_with_mutual_tls_commits_and_refuses_peers_without_a_certificate(
    tls_cluster: tuple[Cluster, TestCA], tmp_path: Path
) -> None:
    cluster, ca = tls_cluster
    cluster.start()
    try:
        channel = pick_channel(cluster, leader=2)
        api = cluster.api(1)
        api.token("xavier", "tx")
        api.token("yvonne", "ty")
        cluster.api(3).ok(
            "/channel",
            {"channel_id": channel, "channel_type": 2, "subscribers": ["xavier", "yvonne"]},
        )

        async def main() -> None:
            async with (
                open_client(*cluster.tcp(1), uid="xavier", token="tx") as x,
                open_client(*cluster.tcp(3), uid="yvonne", token="ty") as y,
            ):
                ack = await x.send(channel, 2, b"across a cluster in mutual TLS")
                assert ack.ok and ack.message_seq == 1
                got = await y.recv()
                assert got.payload == b"across a cluster in mutual TLS"

        trio.run(main)

        address = f"{cluster.hosts[2]}:11110"
        # A member's certificate and the peer token: served (so what follows is the certificate).
        member = ca.issue("member-like")
        answer = _endpoints(address, _creds(ca, member))
        assert isinstance(answer, pb.EndpointsReply), answer
        assert answer.intranet_tcp_addr == f"{cluster.hosts[2]}:5100"
        other = TestCA(tmp_path / "other", "another CA")
        for why, creds in {
            "no client certificate": _creds(ca),
            "a certificate from another CA": _creds(ca, other.issue("intruder")),
            "no TLS": None,
        }.items():
            refused = _endpoints(address, creds)
            assert isinstance(refused, GrpcCallError), why
            assert refused.code == grpc.StatusCode.UNAVAILABLE, (why, refused)
        # the nodes carry on: a second message commits
        for i in cluster.nodes:
            assert cluster.api(i).http.get("/health").status_code == 200
        sent = api.ok(
            "/message/send",
            {
                "from_uid": "xavier",
                "channel_id": channel,
                "channel_type": 2,
                "payload": "YWdhaW4=",
            },
        )
        assert sent["message_seq"] == 2
        for node in cluster.nodes.values():
            log = Path(node.log_path).read_text()
            assert "Traceback" not in log
    finally:
        cluster.stop()
