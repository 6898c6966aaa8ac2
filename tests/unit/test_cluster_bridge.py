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

from cluster import trio_handoff
from cluster.aio_thread import AsyncioThread
from cluster.bridge import AUTH_METADATA_KEY, GrpcAbort, GrpcServer, Notice, caller_host, peer_host
from cluster.grpc_client import GrpcCallError, GrpcClient, GrpcClients
from cluster.peerauth import PeerKeys, sign
from cluster.ratelog import RateLimitedLog
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.raftchat.peer.v1 import peer_pb2_grpc as pb_grpc

KEYS = PeerKeys.of("cluster-secret")
KICK = "/raftchat.peer.v1.Peer/Kick"


def signed(path: str, body: bytes, keys: PeerKeys = KEYS) -> tuple[tuple[str, str], ...]:
    """The metadata of a call of ``path`` with exactly ``body``, as a peer would send it."""
    return ((AUTH_METADATA_KEY, sign(keys, path, body, to="127.0.0.1")),)


Handlers = Mapping[str, Callable[[Any], Awaitable[Any]]]


def make_server(
    handlers: Handlers,
    peer_auth: PeerKeys | None = KEYS,
    bind: str = "127.0.0.1:0",
    grace_s: float = 2.0,
    notices: Mapping[str, Notice] | None = None,
    loop_thread: AsyncioThread | None = None,
) -> GrpcServer:
    return GrpcServer(
        bind=bind,
        peer_auth=peer_auth,
        add_to_server=pb_grpc.add_PeerServicer_to_server,
        servicer_base=pb_grpc.PeerServicer,
        handlers=handlers,
        grace_s=grace_s,
        notices=notices,
        loop_thread=loop_thread,
    )


@asynccontextmanager
async def peer(
    handlers: Handlers, peer_auth: PeerKeys | None = KEYS, client_keys: PeerKeys | None = KEYS
) -> AsyncIterator[GrpcClient]:
    server = make_server(handlers, peer_auth)
    async with server.serving():
        client = GrpcClient(server.address, pb_grpc.PeerStub, client_keys)
        try:
            yield client
        finally:
            client.close()


async def expect_error(call: Awaitable[Any]) -> GrpcCallError:
    with pytest.raises(GrpcCallError) as info:
        await call
    return info.value


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


@pytest.mark.parametrize("client_keys", [None, PeerKeys.of("wrong")])
def test_wrong_or_missing_credential_is_unauthenticated(client_keys: PeerKeys | None) -> None:
    ran = 0

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        nonlocal ran
        ran += 1
        return pb.KickReply()

    async def main() -> None:
        with trio.fail_after(10):
            async with peer({"Kick": kick}, client_keys=client_keys) as client:
                err = await expect_error(client.call("Kick", pb.KickRequest(uid="u"), 5.0))
        assert err.code == grpc.StatusCode.UNAUTHENTICATED
        assert ran == 0

    trio.run(main)


def test_no_auth_configured_accepts_any_caller() -> None:
    async def kick(req: pb.KickRequest) -> pb.KickReply:
        return pb.KickReply(kicked=1)

    async def main() -> None:
        with trio.fail_after(10):
            async with peer({"Kick": kick}, peer_auth=None, client_keys=None) as client:
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
                client = GrpcClient(server.address, pb_grpc.PeerStub, KEYS)
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
                client = GrpcClient(server.address, pb_grpc.PeerStub, KEYS)
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


def test_servers_sharing_a_loop_end_it_after_the_last_leaves_also_when_one_starts_cancelled() -> (
    None
):
    """A server entered under a pending cancel used to stay up on the loop (its bind was not
    awaited to the end), so the shared loop and its thread outlived every server."""
    shared = AsyncioThread("shared-grpc")
    threads: list[threading.Thread] = []

    async def main() -> None:
        async def kick(_req: Any) -> Any:
            return pb.KickReply()

        first = make_server({"Kick": kick}, loop_thread=shared)
        with trio.fail_after(20):
            async with first.serving():
                threads.extend(t for t in threading.enumerate() if t.name == "shared-grpc")
                with trio.move_on_after(0) as scope:
                    async with make_server({}, loop_thread=shared).serving():
                        await trio.sleep_forever()
                assert scope.cancelled_caught
                with socket.socket() as taken:  # a bind failure on the shared loop
                    taken.bind(("127.0.0.1", 0))
                    taken.listen()
                    bind = f"127.0.0.1:{taken.getsockname()[1]}"
                    with pytest.raises(OSError):
                        async with make_server({}, bind=bind, loop_thread=shared).serving():
                            pass
                client = GrpcClient(first.address, pb_grpc.PeerStub, KEYS)
                try:  # the first server still serves on the shared loop
                    await client.call("Kick", pb.KickRequest(), 5.0)
                finally:
                    client.close()

    trio.run(main)
    assert len(threads) == 1
    threads[0].join(5)
    assert not threads[0].is_alive()
    with pytest.raises(RuntimeError):
        shared.release()


def test_nothing_listening_is_unavailable() -> None:
    # A bound but not listening socket: the port is ours, and connecting to it is refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"

        async def main() -> None:
            clients = GrpcClients(pb_grpc.PeerStub, KEYS)
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
    node (nor later notices), and a wrong credential is still refused."""
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
            client = GrpcClient(server.address, pb_grpc.PeerStub, KEYS)
            try:
                for seq in range(1, 11):
                    request = pb.DeliverRequest(messages=[pb.Message(message_seq=seq)])
                    reply = await client.call("Deliver", request, 5)
                    assert isinstance(reply, pb.DeliverReply)
                with trio.fail_after(5):
                    await all_seen.wait()
            finally:
                client.close()
            stranger = GrpcClient(server.address, pb_grpc.PeerStub, PeerKeys.of("wrong"))
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
    monkeypatch.setattr(trio_handoff, "NOTICE_WINDOW", 3)
    handled: list[int] = []
    answered: list[int] = []
    fourth_sent = threading.Event()

    def deliver(req: pb.DeliverRequest) -> None:
        handled.append(req.messages[0].message_seq)

    def sender(address: str) -> None:
        path = "/raftchat.peer.v1.Peer/Deliver"
        with grpc.insecure_channel(address) as channel:
            deliver = channel.unary_unary(path)
            for seq in range(1, 5):
                if seq == 4:
                    fourth_sent.set()
                body = pb.DeliverRequest(messages=[pb.Message(message_seq=seq)]).SerializeToString()
                deliver(body, timeout=10, metadata=signed(path, body))
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
        """Over one channel (one connection): refused calls, then signed calls."""
        body = pb.KickRequest(uid="u").SerializeToString()
        wrong = signed(KICK, body, PeerKeys.of("wrong"))
        out: list[Any] = []
        with grpc.insecure_channel(address) as channel:
            kick = channel.unary_unary(KICK, response_deserializer=pb.KickReply.FromString)
            for metadata in [wrong] * 5 + [()]:
                try:
                    kick(body, metadata=metadata, timeout=5)
                except grpc.RpcError as e:
                    out.append(e.code())
            out.append(kick(body, metadata=signed(KICK, body), timeout=5).kicked)
            now[0] += 10  # the log's interval is over: the next call writes the count
            out.append(kick(body, metadata=signed(KICK, body), timeout=5).kicked)
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
    wrong = "wrong peer credential (another password, or method or body altered)"
    first = f"peer gRPC: refused Kick from 127.0.0.1: {wrong}"
    last = "peer gRPC: refused Kick from 127.0.0.1: no peer credential"
    assert lines == [first, f"5 more from 127.0.0.1 in the last 10 s, the last: {last}"]


def test_a_request_that_does_not_decode_is_invalid_argument_and_reaches_no_handler() -> None:
    calls: list[pb.KickRequest] = []

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        calls.append(req)
        return pb.KickReply(kicked=1)

    def raw_call(address: str, body: bytes, keys: PeerKeys | None) -> grpc.RpcError:
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary(KICK)
            metadata = signed(KICK, body, keys) if keys else None
            with pytest.raises(grpc.RpcError) as info:
                call(body, timeout=5, metadata=metadata)
            return info.value

    async def main() -> None:
        server = make_server({"Kick": kick})
        async with server.serving():
            # Wire type 7 does not exist: protobuf cannot decode this.
            error = await trio.to_thread.run_sync(raw_call, server.address, b"\xff\xff", KEYS)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert "does not decode" in error.details()  # type: ignore[attr-defined]
            # Authentication still comes first.
            error = await trio.to_thread.run_sync(raw_call, server.address, b"\xff\xff", None)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            client = GrpcClient(server.address, pb_grpc.PeerStub, KEYS)
            try:
                assert (await client.call("Kick", pb.KickRequest(uid="u"), 5.0)).kicked == 1
            finally:
                client.close()
        assert [r.uid for r in calls] == ["u"]

    trio.run(main)


# ---- replays -----------------------------------------------------------------------------


class Tap:
    """A man in the middle: a gRPC server that records every call's path, bytes and peer
    credential and passes the call on to ``target`` unchanged (the reply too, unless told to
    ``alter`` it), with the reply's MAC."""

    def __init__(self, target: str, alter: Callable[[bytes], bytes] | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.alter = alter
        """Rewrites each reply on its way back (None: passed on as it came)."""
        self.captured: list[tuple[str, bytes, tuple[tuple[str, str], ...]]] = []
        self._upstream = grpc.insecure_channel(target)
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((self,))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def service(self, details: Any) -> grpc.RpcMethodHandler:
        def relay(body: bytes, context: grpc.ServicerContext) -> bytes:
            md = tuple((k, v) for k, v in details.invocation_metadata if k == AUTH_METADATA_KEY)
            self.captured.append((details.method, body, md))
            try:
                call = self._upstream.unary_unary(details.method)
                reply, done = call.with_call(body, metadata=md, timeout=5)
                context.set_trailing_metadata(done.trailing_metadata() or ())  # the reply's MAC
                return reply if self.alter is None else self.alter(reply)  # type: ignore[no-any-return]
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())  # type: ignore[attr-defined]
                raise

        return grpc.unary_unary_rpc_method_handler(relay)

    def close(self) -> None:
        self.server.stop(0)
        self._upstream.close()


def replay(address: str, path: str, body: bytes, metadata: Any) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(path)(body, metadata=metadata, timeout=5)
        except grpc.RpcError as e:
            return e.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def test_a_captured_call_replayed_is_refused_within_the_window_and_after_it() -> None:
    """A call (and a notice) recorded on the wire, then sent again as it was: refused while
    fresh (its nonce was seen) and once stale (its time has left the window); with its body
    altered it fails the MAC. Only the original reached the handlers, and the refusals were
    logged once, then counted."""
    from cluster.peerauth import PeerVerifier

    clock = [time.time()]  # the server's; the client signs with the real one
    log_clock = [0.0]
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test.bridge.replays")
    handler = Collect()
    logger.addHandler(handler)
    kicked: list[str] = []
    delivered: list[int] = []

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        kicked.append(req.uid)
        return pb.KickReply(kicked=1)

    def deliver(req: pb.DeliverRequest) -> None:
        delivered.append(req.messages[0].message_seq)

    def attack(address: str) -> list[grpc.StatusCode]:
        out = []
        for path, body, md in list(tap.captured):
            out.append(replay(address, path, body, md))  # within the window
            if path.endswith("/Kick"):
                altered = pb.KickRequest(uid="mallory").SerializeToString()
                out.append(replay(address, path, altered, md))
        clock[0] += 31  # the window has passed
        for path, body, md in list(tap.captured):
            out.append(replay(address, path, body, md))
        return out

    async def main() -> None:
        nonlocal tap
        server = make_server({"Kick": kick}, notices={"Deliver": Notice(deliver, pb.DeliverReply)})
        server.peer_verifier = PeerVerifier(KEYS, clock=lambda: clock[0])
        server.auth_refusals = RateLimitedLog(logger, 10.0, clock=lambda: log_clock[0])
        async with server.serving():
            tap = Tap(server.address)
            tap.server.start()
            client = GrpcClient(tap.address, pb_grpc.PeerStub, KEYS)
            try:
                assert (await client.call("Kick", pb.KickRequest(uid="u"), 5.0)).kicked == 1
                request = pb.DeliverRequest(messages=[pb.Message(message_seq=7)])
                assert isinstance(await client.call("Deliver", request, 5.0), pb.DeliverReply)
                assert [p for p, _, _ in tap.captured] == [KICK, "/raftchat.peer.v1.Peer/Deliver"]
                out = await trio.to_thread.run_sync(attack, server.address)
                assert out == [grpc.StatusCode.UNAUTHENTICATED] * 5
                clock[0] = time.time()  # back in step with the client's clock
                log_clock[0] += 10
                # The next accepted call writes the count of the refusals held back.
                assert (await client.call("Kick", pb.KickRequest(uid="v"), 5.0)).kicked == 1
            finally:
                client.close()
                tap.close()

    tap: Tap
    try:
        trio.run(main)
    finally:
        logger.removeHandler(handler)
    assert kicked == ["u", "v"] and delivered == [7]
    assert lines[0] == "peer gRPC: refused Kick from 127.0.0.1: replayed call (nonce already seen)"
    assert lines[1].startswith("4 more from 127.0.0.1 in the last 10 s, the last: ")
    assert "behind this node's clock, outside the 30 s window" in lines[1]
    assert len(lines) == 2


def test_a_call_signed_for_another_node_is_refused() -> None:
    """The server names its bound host as the only recipient it answers to: a call that was
    signed for another node (captured on its way there) is refused, though its credential
    is otherwise fresh and right; one signed for this host passes."""
    kicked: list[str] = []

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        kicked.append(req.uid)
        return pb.KickReply(kicked=1)

    body = pb.KickRequest(uid="u").SerializeToString()

    async def main() -> None:
        server = make_server({"Kick": kick})
        async with server.serving():
            assert server.peer_verifier is not None
            assert server.peer_verifier.names == ("127.0.0.1",)

            def calls() -> list[grpc.StatusCode]:
                other = ((AUTH_METADATA_KEY, sign(KEYS, KICK, body, to="10.0.0.2")),)
                return [
                    replay(server.address, KICK, body, other),
                    replay(server.address, KICK, body, signed(KICK, body)),
                ]

            codes = await trio.to_thread.run_sync(calls)
        assert codes == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK]

    trio.run(main)
    assert kicked == ["u"]


def test_a_handler_sees_the_address_its_call_came_from() -> None:
    seen: list[str] = []

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        seen.append(caller_host())
        return pb.KickReply()

    async def main() -> None:
        with trio.fail_after(10):
            async with peer({"Kick": kick}) as client:
                await client.call("Kick", pb.KickRequest(), 5.0)
        assert caller_host() == ""

    trio.run(main)
    assert seen == ["127.0.0.1"]


def test_a_reply_altered_on_the_way_back_is_refused_by_the_caller() -> None:
    """Requests and replies are signed: a man in the middle who rewrites an answer (here a
    Kick's count) gets UNAUTHENTICATED to the caller, not his answer taken; a reply without
    any MAC (a server that signs nothing) is refused the same way."""

    async def kick(req: pb.KickRequest) -> pb.KickReply:
        return pb.KickReply(kicked=1)

    def forged(_reply: bytes) -> bytes:
        return pb.KickReply(kicked=99).SerializeToString()

    async def main() -> None:
        with trio.fail_after(20):
            server = make_server({"Kick": kick})
            async with server.serving():
                for alter, ok in ((None, True), (forged, False)):
                    tap = Tap(server.address, alter)
                    tap.server.start()
                    client = GrpcClient(tap.address, pb_grpc.PeerStub, KEYS)
                    try:
                        if ok:
                            assert (await client.call("Kick", pb.KickRequest(), 5.0)).kicked == 1
                        else:
                            e = await expect_error(client.call("Kick", pb.KickRequest(), 5.0))
                            assert e.code == grpc.StatusCode.UNAUTHENTICATED
                    finally:
                        client.close()
                        tap.close()
            unsigned = make_server({"Kick": kick}, peer_auth=None)
            async with unsigned.serving():
                client = GrpcClient(unsigned.address, pb_grpc.PeerStub, KEYS)
                try:
                    e = await expect_error(client.call("Kick", pb.KickRequest(), 5.0))
                    assert e.code == grpc.StatusCode.UNAUTHENTICATED
                finally:
                    client.close()

    trio.run(main)
