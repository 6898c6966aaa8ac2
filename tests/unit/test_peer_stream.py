"""The long-lived signed peer stream (cluster/peer_stream.py -> cluster/stream_server.py), in
process over real loopback sockets with the Peer service's DeliverStream."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import trio

from cluster.aio_thread import AsyncioThread
from cluster.bridge import GrpcServer
from cluster.peer_stream import OutboundStream
from cluster.peerauth import METADATA_KEY, PeerKeys, parse, sign
from cluster.stream_auth import EPOCH_METADATA_KEY, frame_mac, stream_key
from cluster.stream_server import InboundStream
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.raftchat.peer.v1 import peer_pb2_grpc as pb_grpc

KEYS = PeerKeys.of("cluster-secret")
PATH = "/raftchat.peer.v1.Peer/DeliverStream"


def batch(n: int) -> pb.DeliverRequest:
    return pb.DeliverRequest(messages=[pb.Message(message_id=n, payload=b"p%d" % n)])


@asynccontextmanager
async def receiver(
    handle: Callable[[Any], None], bind: str = "127.0.0.1:0", keys: PeerKeys = KEYS
) -> AsyncIterator[GrpcServer]:
    server = GrpcServer(
        bind=bind,
        peer_auth=keys,
        add_to_server=pb_grpc.add_PeerServicer_to_server,
        servicer_base=pb_grpc.PeerServicer,
        handlers={},
        inbound={"DeliverStream": InboundStream(handle, pb.DeliverRequest.FromString)},
    )
    async with server.serving():
        yield server


@asynccontextmanager
async def sender(
    target: str, keys: PeerKeys = KEYS, retry_s: float = 3.0
) -> AsyncIterator[OutboundStream]:
    stream = OutboundStream(target, PATH, keys, AsyncioThread("test-streams"), retry_s=retry_s)
    try:
        yield stream
    finally:
        await stream.aclose()


def test_frames_arrive_in_order_and_are_acknowledged() -> None:
    got: list[int] = []
    all_in = trio.Event()

    def handle(req: pb.DeliverRequest) -> None:
        got.append(req.messages[0].message_id)
        if len(got) == 300:
            all_in.set()

    async def main() -> None:
        with trio.fail_after(20):
            async with receiver(handle) as server, sender(server.address) as stream:
                for n in range(1, 301):
                    await stream.send(batch(n).SerializeToString())
                await all_in.wait()
                while stream._in_flight:  # acknowledged in bulk, shortly after
                    await trio.sleep(0.01)
        assert got == list(range(1, 301))
        assert stream.dropped == 0

    trio.run(main)


def test_a_stranger_cannot_open_a_stream() -> None:
    got: list[Any] = []

    async def main() -> None:
        with trio.fail_after(20):
            async with (
                receiver(got.append) as server,
                sender(server.address, PeerKeys.of("another-password"), 0.5) as s,
            ):
                await s.send(batch(1).SerializeToString())
                while not s.dropped:  # refused until it is given up
                    await trio.sleep(0.05)
        assert got == []

    trio.run(main)


def raw_stream(target: str, frames: list[pb.StreamFrame], epoch: bytes | str) -> grpc.StatusCode:
    """Frames as a hostile peer with the password might write them; the stream's status.
    ``epoch``: the sender's epoch, or an opening credential (signed over the epoch b"g" * 16)."""
    if isinstance(epoch, str):
        value, epoch = epoch, b"g" * 16
    else:
        value = sign(KEYS, PATH, epoch, to="127.0.0.1")
    metadata = ((METADATA_KEY, value), (EPOCH_METADATA_KEY, epoch.hex()))
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(PATH)(
            iter([f.SerializeToString() for f in frames]), metadata=metadata, timeout=10
        )
        try:
            list(call)
        except grpc.RpcError as e:
            return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def skey_of(value: str) -> bytes:
    cred = parse(value)
    assert cred is not None
    return stream_key(KEYS.signing, PATH, cred.nonce_hex)


def test_forged_and_out_of_order_frames_end_the_stream() -> None:
    got: list[Any] = []
    body = batch(1).SerializeToString()

    async def main() -> None:
        with trio.fail_after(30):
            async with receiver(got.append) as server:
                forged = [pb.StreamFrame(seq=1, body=body, mac=b"\0" * 32)]
                code = await trio.to_thread.run_sync(raw_stream, server.address, forged, b"e" * 16)
                assert code == grpc.StatusCode.UNAUTHENTICATED
                # Under the wrong stream's key (a frame moved from another stream):
                other = frame_mac(skey_of(sign(KEYS, PATH, b"x" * 16, to="127.0.0.1")), 1, body)
                moved = [pb.StreamFrame(seq=1, body=body, mac=other)]
                code = await trio.to_thread.run_sync(raw_stream, server.address, moved, b"f" * 16)
                assert code == grpc.StatusCode.UNAUTHENTICATED
                assert got == []
                # Right MACs, but a frame skipped: the stream ends after the first.
                value = sign(KEYS, PATH, b"g" * 16, to="127.0.0.1")
                skey = skey_of(value)
                gap = [
                    pb.StreamFrame(seq=n, body=body, mac=frame_mac(skey, n, body)) for n in (1, 3)
                ]
                code = await trio.to_thread.run_sync(raw_stream, server.address, gap, value)
                assert code == grpc.StatusCode.INVALID_ARGUMENT
                assert len(got) == 1

    trio.run(main)


def test_frames_wait_for_a_restarted_receiver_and_arrive_once() -> None:
    got: list[int] = []

    def handle(req: pb.DeliverRequest) -> None:
        got.append(req.messages[0].message_id)

    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{probe.getsockname()[1]}"
        with trio.fail_after(30):
            async with sender(address) as stream:
                async with receiver(handle, bind=address):
                    await stream.send(batch(1).SerializeToString())
                    while got != [1]:
                        await trio.sleep(0.01)
                # The receiver is gone; two more frames wait for the next one.
                await stream.send(batch(2).SerializeToString())
                await stream.send(batch(3).SerializeToString())
                async with receiver(handle, bind=address):
                    while len(got) < 3 or stream._in_flight:
                        await trio.sleep(0.02)
                assert stream.dropped == 0
        assert got == [1, 2, 3]

    trio.run(main)
