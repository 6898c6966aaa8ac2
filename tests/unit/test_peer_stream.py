"""The long-lived signed peer stream (cluster/peer_stream.py -> cluster/stream_server.py), in
process over real loopback sockets with the Peer service's DeliverStream."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import trio

from cluster import stream_server
from cluster.aio_thread import AsyncioThread
from cluster.bridge import GrpcAbort, GrpcServer
from cluster.grpc_client import GrpcCallError
from cluster.peer_stream import OutboundStream
from cluster.peerauth import METADATA_KEY, PeerKeys, parse, sign
from cluster.stream_auth import EPOCH_METADATA_KEY, frame_mac, stream_key
from cluster.stream_calls import MIN_LEFT_MS, CallStream, _Outgoing
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
        got.extend(m.message_id for m in req.messages)  # several batches may come merged
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
                # A body that does not decode, under a right MAC: that stream ends, no more.
                value = sign(KEYS, PATH, b"g" * 16, to="127.0.0.1")
                junk = b"\xff\xff\xff"
                tag = frame_mac(skey_of(value), 2, junk)  # 2: this epoch's 1 was handed on
                bad = [pb.StreamFrame(seq=2, body=junk, mac=tag)]
                code = await trio.to_thread.run_sync(raw_stream, server.address, bad, value)
                assert code == grpc.StatusCode.INVALID_ARGUMENT
                assert len(got) == 1

    trio.run(main)


def test_frames_wait_for_a_restarted_receiver_and_arrive_once() -> None:
    got: list[int] = []
    handed: list[int] = []

    def handle(req: pb.DeliverRequest) -> None:
        handed.append(len(req.messages))
        got.extend(m.message_id for m in req.messages)

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
        # The two that waited went as one frame: their DeliverRequests merged, in order.
        assert handed == [1, 2]

    trio.run(main)


# ---- unary calls over the stream of calls (cluster/stream_calls.py) -------------------------

CALLS = "/raftchat.peer.v1.Peer/Calls"


@asynccontextmanager
async def answering(
    handlers: Mapping[str, Callable[[Any], Awaitable[Any]]],
    bind: str = "127.0.0.1:0",
    calls: str = "Calls",
) -> AsyncIterator[GrpcServer]:
    server = GrpcServer(
        bind=bind,
        peer_auth=KEYS,
        add_to_server=pb_grpc.add_PeerServicer_to_server,
        servicer_base=pb_grpc.PeerServicer,
        handlers=handlers,
        calls=calls,
    )
    async with server.serving():
        yield server


@asynccontextmanager
async def caller(target: str, keys: PeerKeys = KEYS) -> AsyncIterator[CallStream]:
    stream = CallStream(target, CALLS, keys, AsyncioThread("test-calls"))
    try:
        yield stream
    finally:
        await stream.aclose()


def test_calls_get_their_own_replies_and_errors() -> None:
    async def online(req: pb.OnlineRequest) -> pb.OnlineReply:
        await trio.sleep(0.001 * len(req.uids[0]))  # answers finish out of order
        return pb.OnlineReply(entries=[pb.OnlineEntry(uid=u) for u in req.uids])

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        raise GrpcAbort(grpc.StatusCode.FAILED_PRECONDITION, f"no {req.uid}")

    async def slow(req: pb.ReadRequest) -> pb.ReadReply:
        await trio.sleep(10)
        return pb.ReadReply()

    decode = pb.OnlineReply.FromString

    async def main() -> None:
        with trio.fail_after(20):
            async with (
                answering({"Online": online, "Kick": kick, "Read": slow}) as server,
                caller(server.address) as stream,
            ):
                uids = ["u" * n for n in range(30, 0, -1)]
                replies: dict[str, list[str]] = {}

                async def one(uid: str) -> None:
                    reply = await stream.call("Online", pb.OnlineRequest(uids=[uid]), 5, decode)
                    replies[uid] = [e.uid for e in reply.entries]

                async with trio.open_nursery() as nursery:
                    for uid in uids:
                        nursery.start_soon(one, uid)
                assert replies == {u: [u] for u in uids}
                with pytest.raises(GrpcCallError) as info:
                    await stream.call("Kick", pb.KickRequest(uid="x"), 5, decode)
                assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
                assert info.value.details == "no x"
                with pytest.raises(GrpcCallError) as info:
                    await stream.call("Frobnicate", pb.KickRequest(), 5, decode)
                assert info.value.code == grpc.StatusCode.UNIMPLEMENTED
                with pytest.raises(GrpcCallError) as info:
                    await stream.call("Read", pb.ReadRequest(), 0.2, decode)
                assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    trio.run(main)


def test_calls_fail_fast_without_a_peer_and_work_once_it_is_back() -> None:
    async def online(req: pb.OnlineRequest) -> pb.OnlineReply:
        return pb.OnlineReply(entries=[pb.OnlineEntry(uid=u) for u in req.uids])

    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{probe.getsockname()[1]}"
        request, decode = pb.OnlineRequest(uids=["a"]), pb.OnlineReply.FromString
        with trio.fail_after(30):
            async with caller(address) as stream:
                with pytest.raises(GrpcCallError) as info:
                    await stream.call("Online", request, 5, decode)
                assert info.value.code == grpc.StatusCode.UNAVAILABLE
                async with answering({"Online": online}, bind=address):
                    while True:  # the channel reconnects with its own back-off
                        try:
                            reply = await stream.call("Online", request, 5, decode)
                            break
                        except GrpcCallError:
                            await trio.sleep(0.05)
                    assert [e.uid for e in reply.entries] == ["a"]

    trio.run(main)


def test_a_stranger_cannot_call() -> None:
    called: list[Any] = []

    async def online(req: pb.OnlineRequest) -> pb.OnlineReply:
        called.append(req)
        return pb.OnlineReply()

    async def main() -> None:
        with trio.fail_after(20):
            async with (
                answering({"Online": online}) as server,
                caller(server.address, PeerKeys.of("another-password")) as stream,
            ):
                with pytest.raises(GrpcCallError) as info:
                    await stream.call("Online", pb.OnlineRequest(), 5, pb.OnlineReply.FromString)
                assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert called == []

    trio.run(main)


def test_a_peer_without_the_stream_is_marked_for_single_calls() -> None:
    async def online(req: pb.OnlineRequest) -> pb.OnlineReply:
        return pb.OnlineReply()

    async def main() -> None:
        with trio.fail_after(20):
            async with (
                answering({"Online": online}, calls="") as server,  # an older version
                caller(server.address) as stream,
            ):
                with pytest.raises(GrpcCallError):
                    await stream.call("Online", pb.OnlineRequest(), 5, pb.OnlineReply.FromString)
                assert stream.unsupported

    trio.run(main)


def test_a_stopping_receiver_lets_the_calls_in_flight_finish() -> None:
    done: list[str] = []

    async def online(req: pb.OnlineRequest) -> pb.OnlineReply:
        await trio.sleep(0.5)
        done.append(req.uids[0])
        return pb.OnlineReply(entries=[pb.OnlineEntry(uid=req.uids[0])])

    async def main() -> None:
        stop, up = trio.Event(), trio.Event()
        address: list[str] = []
        decode = pb.OnlineReply.FromString

        async def serve() -> None:
            async with answering({"Online": online}) as server:
                address.append(server.address)
                up.set()
                await stop.wait()

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                await up.wait()
                async with caller(address[0]) as stream:
                    await stream.call("Online", pb.OnlineRequest(uids=["warm"]), 5, decode)
                    request = pb.OnlineRequest(uids=["in flight"])
                    async with trio.open_nursery() as calls:
                        calls.start_soon(stream.call, "Online", request, 5, decode)
                        await trio.sleep(0.1)
                        stop.set()  # the receiver stops while the call runs
        assert done == ["warm", "in flight"]

    trio.run(main)


def test_a_call_past_its_time_is_never_sent() -> None:
    ran: list[Any] = []

    async def online(req: pb.OnlineRequest) -> pb.OnlineReply:
        ran.append(req)
        return pb.OnlineReply()

    outgoing = _Outgoing(1, "Online", b"", deadline=100.0)
    assert outgoing.body(now=99.0) is not None
    assert outgoing.body(now=100.0 - MIN_LEFT_MS / 2000) is None  # too late to be answered
    outgoing.withdrawn = True  # its caller gave up
    assert outgoing.body(now=99.0) is None

    async def main() -> None:
        with trio.fail_after(20):
            async with answering({"Online": online}) as server, caller(server.address) as s:
                await s.call("Online", pb.OnlineRequest(), 5, pb.OnlineReply.FromString)
                with pytest.raises(GrpcCallError) as info:
                    await s.call("Online", pb.OnlineRequest(), 0.005, pb.OnlineReply.FromString)
                assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
                await s.call("Online", pb.OnlineRequest(), 5, pb.OnlineReply.FromString)
        assert len(ran) == 2

    trio.run(main)


def test_a_batch_queued_while_trio_is_behind_counts_as_handed_on() -> None:
    """The stream breaks while the receiver waits for trio to catch up: the frame was queued
    for trio, so the sender's next stream must not get it handed on a second time."""
    epochs = stream_server._Epochs()
    queued: list[Any] = []

    class Host:
        def queue_for_trio(self, name: str, handle: Any, request: Any) -> Any:
            queued.append(request)
            return True, asyncio.get_running_loop().create_future()  # trio is behind

    class Acks:
        def up_to(self, seq: int) -> None:
            pass

    skey, body = b"k" * 32, batch(7).SerializeToString()

    async def frames() -> AsyncIterator[bytes]:
        yield pb.StreamFrame(seq=7, body=body, mac=frame_mac(skey, 7, body)).SerializeToString()

    async def main() -> None:
        session = stream_server._Batches(
            Host(),  # type: ignore[arg-type]
            "DeliverStream",
            InboundStream(lambda r: None, pb.DeliverRequest.FromString),
            skey,
            b"e" * 16,
            epochs,
            Acks(),  # type: ignore[arg-type]
        )
        receiving = asyncio.ensure_future(session.receive(frames()))
        while not queued:
            await asyncio.sleep(0)
        receiving.cancel()  # the stream breaks during the wait
        with contextlib.suppress(asyncio.CancelledError):
            await receiving

    asyncio.run(main())
    assert len(queued) == 1
    assert epochs.last(b"e" * 16) == 7
