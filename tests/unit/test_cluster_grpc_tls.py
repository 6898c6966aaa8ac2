"""The bridge over TLS (``cluster/grpc_tls.py``): a server with a certificate, with and without
client certificates required, in process over loopback with the Peer service and a CA made by
the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trio

from cluster.bridge import GrpcServer
from cluster.grpc_client import GrpcCallError, GrpcClient
from cluster.grpc_tls import channel_credentials, server_credentials
from cluster.peerauth import PeerKeys
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.raftchat.peer.v1 import peer_pb2_grpc as pb_grpc
from tests.tlsutil import Issued, TestCA

KEYS = PeerKeys.of("cluster-secret")


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = TestCA(directory / "ca")
        self.server = self.ca.issue("server", ips=["127.0.0.1"])
        self.client = self.ca.issue("client")
        self.stranger_ca = TestCA(directory / "other", "another CA")
        self.stranger = self.stranger_ca.issue("stranger")

    def creds(
        self, issued: Issued | None = None, ca: TestCA | None = None
    ) -> grpc.ChannelCredentials:
        ca = ca or self.ca
        if issued is None:
            return channel_credentials(ca.ca_file.read_bytes())
        return channel_credentials(
            ca.ca_file.read_bytes(), issued.cert.read_bytes(), issued.key.read_bytes()
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    yield Pki(tmp_path_factory.mktemp("pki"))


def _server(pki: Pki, mutual: bool, ran: list[str]) -> GrpcServer:
    async def kick(req: pb.KickRequest) -> pb.KickReply:
        ran.append(req.uid)
        return pb.KickReply(kicked=1)

    s = pki.server
    client_ca = pki.ca.ca_file.read_bytes() if mutual else None
    return GrpcServer(
        bind="127.0.0.1:0",
        peer_auth=KEYS,
        add_to_server=pb_grpc.add_PeerServicer_to_server,
        servicer_base=pb_grpc.PeerServicer,
        handlers={"Kick": kick},
        credentials=server_credentials(s.cert.read_bytes(), s.key.read_bytes(), client_ca),
    )


async def _kick(address: str, creds: grpc.ChannelCredentials | None, uid: str) -> int:
    client = GrpcClient(address, pb_grpc.PeerStub, KEYS, creds)
    try:
        reply = await client.call("Kick", pb.KickRequest(uid=uid), 3.0)
        return int(reply.kicked)
    finally:
        client.close()


def test_mutual_tls_serves_only_clients_with_a_certificate_from_the_ca(pki: Pki) -> None:
    ran: list[str] = []

    async def main() -> None:
        server = _server(pki, mutual=True, ran=ran)
        async with server.serving():
            address = server.address
            assert await _kick(address, pki.creds(pki.client), "member") == 1
            refused = {
                "no certificate": pki.creds(),
                "another CA's certificate": pki.creds(pki.stranger),
                "plain": None,
            }
            for uid, creds in refused.items():
                with pytest.raises(GrpcCallError) as e:
                    await _kick(address, creds, uid)
                assert e.value.code == grpc.StatusCode.UNAVAILABLE, uid
            # a client that does not trust the server's CA refuses it in turn
            with pytest.raises(GrpcCallError) as e:
                await _kick(address, pki.creds(pki.stranger, pki.stranger_ca), "wrong CA")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
            # failed handshakes cost only their connections
            assert await _kick(address, pki.creds(pki.client), "member again") == 1

    trio.run(main)
    assert ran == ["member", "member again"]


def test_server_tls_without_a_client_ca_serves_any_client_that_trusts_it(pki: Pki) -> None:
    ran: list[str] = []

    async def main() -> None:
        server = _server(pki, mutual=False, ran=ran)
        async with server.serving():
            assert await _kick(server.address, pki.creds(), "anyone") == 1
            with pytest.raises(GrpcCallError) as e:
                await _kick(server.address, None, "plain")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE

    trio.run(main)
    assert ran == ["anyone"]
