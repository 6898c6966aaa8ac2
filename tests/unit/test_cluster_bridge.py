"""The trio <-> grpcio bridge, in process over real loopback sockets with the Peer service."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import trio

from cluster import bridge
from cluster.bridge import (
    AUTH_METADATA_KEY,
    GrpcAbort,
    GrpcCallError,
    GrpcClient,
    GrpcClients,
    GrpcServer,
    Notice,
    peer_host,
    peer_token,
)
from cluster.ratelog import RateLimitedLog
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.raftchat.peer.v1 import peer_pb2_grpc as pb_grpc

TOKEN = peer_token("cluster-secret")
Handlers = Mapping[str, Callable[[Any], Awaitable[Any]]]


def make_server(
    handlers: Handlers,
    auth_token: str | None = TOKEN,
    bind: str = "127.0.0.1:0",
    grace_s: float = 2.0,
    notices: Mapping[str, Notice] | None = None,
) -> GrpcServer:
    return GrpcServer(
        bind=bind,
        auth_token=auth_token,
        add_to_server=pb_grpc.add_PeerServicer_to_server,
        servicer_base=pb_grpc.PeerServicer,
        handlers=handlers,
        grace_s=grace_s,
        notices=notices,
    )


@asynccontextmanager
async def peer(
    handlers: Handlers, auth_token: str | None = TOKEN, client_token: str | None = TOKEN
) -> AsyncIterator[GrpcClient]:
    server = make_server(handlers, auth_token)
    async with server.serving():
        client = GrpcClient(server.address, pb_grpc.PeerStub, client_token)
        try:
            yield client
        finally:
            client.close()


async def expect_error(call: Awaitable[Any]) -> GrpcCallError:
    with pytest.raises(GrpcCallError) as info:
        await call
    return info.value


def test_peer_token() -> None:
    token = peer_token("pw")
    assert len(token) == 64 and int(token, 16) >= 0
    assert token == peer_token("pw") != peer_token("pw2")


def test_unknown_rpc_name_is_refused() -> None:
    with pytest.raises(ValueError, match="Frobnicate"):
        make_server({"Frobnicate": lambda r: r})


def test_round_trip_of_several_rpcs() -> None:
    delivered_send, delivered_recv = trio.open_memory_channel[pb.DeliverRequest](10)

    async def forward_sends(req: pb.ForwardSendsRequest) -> pb.ForwardSendsReply:
        outcomes = [
            pb.SendOutcome(reason=1, message_id=1000 + i, message_seq=req.group * 10 + i)
            for i, _ in enumerate(req.items)
        ]
        return pb.ForwardSendsReply(status=pb.Status(code=pb.Status.OK), outcomes=outcomes)

    async def deliver(req: pb.DeliverRequest) -> pb.DeliverReply:
        await delivered_send.send(req)
        return pb.DeliverReply()

    async def online(req: pb.OnlineRequest) -> pb.OnlineReply:
        return pb.OnlineReply(entries=[pb.OnlineEntry(uid=u, device_flag=1) for u in req.uids])

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        return pb.KickReply(kicked=2 if req.device_flag == -1 else 1)

    handlers: Handlers = {
        "ForwardSends": forward_sends,
        "Deliver": deliver,
        "Online": online,
        "Kick": kick,
    }

    async def main() -> None:
        with trio.fail_after(10):
            async with peer(handlers) as client:
                items = [pb.SendItem(from_uid="a", channel_id="a@b", payload=b"hi")] * 3
                reply = await client.call(
                    "ForwardSends", pb.ForwardSendsRequest(group=7, items=items), 5.0
                )
                assert reply.status.code == pb.Status.OK
                assert [(o.message_id, o.message_seq) for o in reply.outcomes] == [
                    (1000, 70),
                    (1001, 71),
                    (1002, 72),
                ]

                msg = pb.Message(message_id=5, channel_id="g1", payload=b"\x00\xff")
                request = pb.DeliverRequest(messages=[msg], recipients=[pb.Recipients(uids=["u1"])])
                assert await client.call("Deliver", request, 5.0) == pb.DeliverReply()
                assert delivered_recv.receive_nowait() == request

                reply = await client.call("Online", pb.OnlineRequest(uids=["x", "y"]), 5.0)
                assert [e.uid for e in reply.entries] == ["x", "y"]
                reply = await client.call("Kick", pb.KickRequest(uid="x", device_flag=-1), 5.0)
                assert reply.kicked == 2

    trio.run(main)


def test_concurrent_calls_all_in_flight_at_once() -> None:
    n = 50
    arrived = 0
    all_arrived = trio.Event()

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        # Every handler waits for all the others: the reply only comes if all 50 RPCs are
        # in flight in trio at the same time.
        nonlocal arrived
        arrived += 1
        if arrived == n:
            all_arrived.set()
        await all_arrived.wait()
        return pb.KickReply(kicked=int(req.uid[1:]))

    async def main() -> None:
        results: dict[int, int] = {}

        async def one(client: GrpcClient, i: int) -> None:
            reply = await client.call("Kick", pb.KickRequest(uid=f"u{i}"), 10.0)
            results[i] = reply.kicked

        with trio.fail_after(10):
            async with peer({"Kick": kick}) as client, trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, client, i)
        assert results == {i: i for i in range(n)}

    trio.run(main)


@pytest.mark.parametrize("client_token", [None, peer_token("wrong"), TOKEN[:-1]])
def test_wrong_or_missing_token_is_unauthenticated(client_token: str | None) -> None:
    ran = 0

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        nonlocal ran
        ran += 1
        return pb.KickReply()

    async def main() -> None:
        with trio.fail_after(10):
            async with peer({"Kick": kick}, client_token=client_token) as client:
                err = await expect_error(client.call("Kick", pb.KickRequest(uid="u"), 5.0))
        assert err.code == grpc.StatusCode.UNAUTHENTICATED
        assert ran == 0

    trio.run(main)


def test_no_auth_configured_accepts_any_caller() -> None:
    async def kick(req: pb.KickRequest) -> pb.KickReply:
        return pb.KickReply(kicked=1)

    async def main() -> None:
        with trio.fail_after(10):
            async with peer({"Kick": kick}, auth_token=None, client_token=None) as client:
                assert (await client.call("Kick", pb.KickRequest(), 5.0)).kicked == 1

    trio.run(main)


def test_handler_errors_map_to_status_codes() -> None:
    async def kick(req: pb.KickRequest) -> pb.KickReply:
        raise ValueError("boom: bad uid")

    async def online(req: pb.OnlineRequest) -> pb.OnlineReply:
        raise GrpcAbort(grpc.StatusCode.NOT_FOUND, "x")

    async def main() -> None:
        with trio.fail_after(10):
            async with peer({"Kick": kick, "Online": online}) as client:
                err = await expect_error(client.call("Kick", pb.KickRequest(), 5.0))
                assert err.code == grpc.StatusCode.INTERNAL
                assert err.details == "boom: bad uid"
                err = await expect_error(client.call("Online", pb.OnlineRequest(), 5.0))
                assert (err.code, err.details) == (grpc.StatusCode.NOT_FOUND, "x")
                # Unhandled RPCs keep the generated behaviour.
                err = await expect_error(client.call("Read", pb.ReadRequest(), 5.0))
                assert err.code == grpc.StatusCode.UNIMPLEMENTED

    trio.run(main)


def stuck_handler() -> tuple[Callable[[Any], Awaitable[Any]], trio.Event, trio.Event, list[str]]:
    """A handler that never answers; records in `ended` how it was stopped."""
    entered, finished = trio.Event(), trio.Event()
    ended: list[str] = []

    async def handler(req: Any) -> Any:
        entered.set()
        try:
            await trio.Event().wait()
        except trio.Cancelled:
            ended.append("cancelled")
            raise
        finally:
            finished.set()

    return handler, entered, finished, ended


def test_client_deadline_cancels_the_server_handler() -> None:
    handler, _entered, finished, ended = stuck_handler()

    async def main() -> None:
        with trio.fail_after(10):
            async with peer({"Kick": handler}) as client:
                start = time.monotonic()
                err = await expect_error(client.call("Kick", pb.KickRequest(), 0.3))
                assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED
                assert time.monotonic() - start < 2.0
                await finished.wait()
                assert ended == ["cancelled"]

    trio.run(main)


def test_cancelling_the_caller_cancels_the_rpc_and_keeps_the_client_usable() -> None:
    handler, entered, finished, ended = stuck_handler()

    async def online(req: pb.OnlineRequest) -> pb.OnlineReply:
        return pb.OnlineReply(entries=[pb.OnlineEntry(uid="ok")])

    async def main() -> None:
        with trio.fail_after(10):
            async with peer({"Kick": handler, "Online": online}) as client:
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as nursery:

                        async def cancel_when_entered() -> None:
                            await entered.wait()
                            scope.cancel()

                        nursery.start_soon(cancel_when_entered)
                        await client.call("Kick", pb.KickRequest(), 30.0)
                assert scope.cancelled_caught
                # The RPC was cancelled on the wire: the server's trio handler stops too.
                await finished.wait()
                assert ended == ["cancelled"]
                reply = await client.call("Online", pb.OnlineRequest(), 5.0)
                assert reply.entries[0].uid == "ok"

                # A caller that is already cancelled never sends the call.
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await client.call("Kick", pb.KickRequest(), 30.0)
                assert scope.cancelled_caught

    trio.run(main)


def test_leaving_serving_lets_in_flight_handlers_answer() -> None:
    entered, release = trio.Event(), trio.Event()

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        entered.set()
        await release.wait()
        return pb.KickReply(kicked=9)

    async def main() -> None:
        server = make_server({"Kick": kick}, grace_s=30.0)
        replies: list[int] = []

        async def caller(client: GrpcClient) -> None:
            replies.append((await client.call("Kick", pb.KickRequest(), 10.0)).kicked)

        # Bounded well below the grace: the stop ends as soon as the in-flight RPC is answered.
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery, server.serving():
                client = GrpcClient(server.address, pb_grpc.PeerStub, TOKEN)
                nursery.start_soon(caller, client)
                await entered.wait()
                # The handler can only answer after the stop has begun (it runs at the
                # next trio checkpoint, which is inside the shutdown).
                release.set()
        assert replies == [9]
        client.close()

    trio.run(main)


def test_leaving_serving_with_stuck_calls_does_not_hang() -> None:
    n = 3
    started = 0
    all_started = trio.Event()
    cancelled = 0

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        nonlocal started, cancelled
        started += 1
        if started == n:
            all_started.set()
        try:
            await trio.Event().wait()
        finally:
            cancelled += 1
        raise AssertionError("unreachable")

    async def main() -> None:
        server = make_server({"Kick": kick}, grace_s=0.2)
        errors: list[GrpcCallError] = []

        async def caller(client: GrpcClient) -> None:
            errors.append(await expect_error(client.call("Kick", pb.KickRequest(), 10.0)))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery, server.serving():
                client = GrpcClient(server.address, pb_grpc.PeerStub, TOKEN)
                for _ in range(n):
                    nursery.start_soon(caller, client)
                await all_started.wait()
            # After the grace the stuck handlers were cancelled and answered a retryable error.
            assert cancelled == n
            assert [(e.code, e.details) for e in errors] == [
                (grpc.StatusCode.UNAVAILABLE, "node is shutting down")
            ] * n
            err = await expect_error(client.call("Kick", pb.KickRequest(), 5.0))
            assert err.code == grpc.StatusCode.UNAVAILABLE
        client.close()

    trio.run(main)


def test_second_server_on_the_same_port_fails_to_bind() -> None:
    async def main() -> None:
        with trio.fail_after(10):
            first = make_server({})
            async with first.serving():
                assert first.port > 0
                # One line that names the address and the reason (grpcio's own error has
                # neither: it prints the reason to stderr from its C core).
                with pytest.raises(OSError) as caught:
                    async with make_server({}, bind=first.address).serving():
                        pass  # pragma: no cover
                assert str(caught.value) == (
                    f"cannot listen on {first.address} (gRPC): Address already in use"
                )

    trio.run(main)


def test_errors_in_the_serving_block_come_out_unwrapped() -> None:
    async def main() -> None:
        with trio.fail_after(10):
            with pytest.raises(KeyError):
                async with make_server({}).serving():
                    raise KeyError("body")
            with trio.move_on_after(0) as scope:
                async with make_server({}).serving():
                    await trio.sleep_forever()
            assert scope.cancelled_caught

    trio.run(main)


def test_nothing_listening_is_unavailable() -> None:
    # A bound but not listening socket: the port is ours, and connecting to it is refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"

        async def main() -> None:
            clients = GrpcClients(pb_grpc.PeerStub, TOKEN)
            assert clients.get(target) is clients.get(target)
            start = time.monotonic()
            with trio.fail_after(5):
                err = await expect_error(clients.get(target).call("Kick", pb.KickRequest(), 3.0))
            assert err.code == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - start < 3.0
            clients.close_all()

        trio.run(main)


def test_notices_run_in_trio_in_arrival_order_and_answer_at_once() -> None:
    """One-way RPCs: the handler sees every request in order, a failing one does not stop the
    node (nor later notices), and a wrong token is still refused."""
    seen: list[int] = []
    all_seen = trio.Event()

    def deliver(req: pb.DeliverRequest) -> None:
        seq = req.messages[0].message_seq
        if seq == 3:
            raise RuntimeError("a bug in one delivery")
        seen.append(seq)
        if len(seen) == 9:
            all_seen.set()

    async def main() -> None:
        server = make_server({}, notices={"Deliver": Notice(deliver, pb.DeliverReply)})
        async with server.serving():
            client = GrpcClient(server.address, pb_grpc.PeerStub, TOKEN)
            try:
                for seq in range(1, 11):
                    request = pb.DeliverRequest(messages=[pb.Message(message_seq=seq)])
                    reply = await client.call("Deliver", request, 5)
                    assert isinstance(reply, pb.DeliverReply)
                with trio.fail_after(5):
                    await all_seen.wait()
            finally:
                client.close()
            stranger = GrpcClient(server.address, pb_grpc.PeerStub, "wrong")
            try:
                error = await expect_error(stranger.call("Deliver", pb.DeliverRequest(), 5))
                assert error.code == grpc.StatusCode.UNAUTHENTICATED
            finally:
                stranger.close()

    trio.run(main)
    assert seen == [1, 2, 4, 5, 6, 7, 8, 9, 10]


def test_notices_wait_for_trio_once_a_window_of_them_is_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While trio cannot run (here: its thread is blocked), the first NOTICE_WINDOW notices are
    answered at once and the next one only after trio has handled it."""
    monkeypatch.setattr(bridge, "NOTICE_WINDOW", 3)
    handled: list[int] = []
    answered: list[int] = []
    fourth_sent = threading.Event()

    def deliver(req: pb.DeliverRequest) -> None:
        handled.append(req.messages[0].message_seq)

    def sender(address: str) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.PeerStub(channel)
            for seq in range(1, 5):
                if seq == 4:
                    fourth_sent.set()
                request = pb.DeliverRequest(messages=[pb.Message(message_seq=seq)])
                stub.Deliver(request, timeout=10, metadata=((AUTH_METADATA_KEY, TOKEN),))
                answered.append(seq)

    async def main() -> None:
        server = make_server({}, notices={"Deliver": Notice(deliver, pb.DeliverReply)})
        async with server.serving():
            thread = threading.Thread(target=sender, args=(server.address,))
            thread.start()
            # Block the trio thread: notices queue up behind it.
            assert fourth_sent.wait(10)
            # The fourth cannot be answered before trio handles it; give it a moment to
            # (wrongly) come back, without letting trio run.
            time.sleep(0.5)
            assert answered == [1, 2, 3] and handled == []
            await trio.to_thread.run_sync(thread.join, 10)
            assert answered == [1, 2, 3, 4] and handled == [1, 2, 3, 4]

    trio.run(main)


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:50432", "127.0.0.1"),
        ("ipv6:[::1]:50432", "::1"),
        ("ipv6:%5B::1%5D:50432", "::1"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
        ("", ""),
    ],
)
def test_peer_host_is_the_callers_address(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_refused_calls_are_logged_once_per_address_and_end_only_themselves() -> None:
    now = [100.0]
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test.bridge.refusals")
    handler = Collect()
    logger.addHandler(handler)
    ran = 0

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        nonlocal ran
        ran += 1
        return pb.KickReply(kicked=1)

    def calls(address: str) -> list[Any]:
        """Over one channel (one connection): refused calls, then calls with the token."""
        wrong, right = ((AUTH_METADATA_KEY, "wrong"),), ((AUTH_METADATA_KEY, TOKEN),)
        out: list[Any] = []
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.PeerStub(channel)
            for metadata in [wrong] * 5 + [()]:
                try:
                    stub.Kick(pb.KickRequest(uid="u"), metadata=metadata, timeout=5)
                except grpc.RpcError as e:
                    out.append(e.code())
            out.append(stub.Kick(pb.KickRequest(uid="u"), metadata=right, timeout=5).kicked)
            now[0] += 10  # the log's interval is over: the next call writes the count
            out.append(stub.Kick(pb.KickRequest(uid="u"), metadata=right, timeout=5).kicked)
        return out

    async def main() -> None:
        server = make_server({"Kick": kick})
        server.auth_refusals = RateLimitedLog(logger, 10.0, clock=lambda: now[0])
        with trio.fail_after(20):
            async with server.serving():
                out = await trio.to_thread.run_sync(calls, server.address)
        assert out == [grpc.StatusCode.UNAUTHENTICATED] * 6 + [1, 1]

    try:
        trio.run(main)
    finally:
        logger.removeHandler(handler)
    assert ran == 2
    first = "peer gRPC: refused Kick from 127.0.0.1: wrong peer token"
    last = "peer gRPC: refused Kick from 127.0.0.1: no peer token"
    assert lines == [first, f"5 more from 127.0.0.1 in the last 10 s, the last: {last}"]


def test_a_request_that_does_not_decode_is_invalid_argument_and_reaches_no_handler() -> None:
    calls: list[pb.KickRequest] = []

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        calls.append(req)
        return pb.KickReply(kicked=1)

    def raw_call(address: str, body: bytes, token: str | None) -> grpc.RpcError:
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary("/raftchat.peer.v1.Peer/Kick")
            metadata = [(bridge.AUTH_METADATA_KEY, token)] if token else None
            with pytest.raises(grpc.RpcError) as info:
                call(body, timeout=5, metadata=metadata)
            return info.value

    async def main() -> None:
        server = make_server({"Kick": kick})
        async with server.serving():
            # Wire type 7 does not exist: protobuf cannot decode this.
            error = await trio.to_thread.run_sync(raw_call, server.address, b"\xff\xff", TOKEN)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert "does not decode" in error.details()  # type: ignore[attr-defined]
            # Authentication still comes first.
            error = await trio.to_thread.run_sync(raw_call, server.address, b"\xff\xff", None)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            client = GrpcClient(server.address, pb_grpc.PeerStub, TOKEN)
            try:
                assert (await client.call("Kick", pb.KickRequest(uid="u"), 5.0)).kicked == 1
            finally:
                client.close()
        assert [r.uid for r in calls] == ["u"]

    trio.run(main)
