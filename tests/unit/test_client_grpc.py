"""The gRPC client without a node: the error details it parses (built as the node builds them,
by ``node.grpcapi.errors``), request building, and, against an in-process gRPC server, failover
past a target that is down and the trio client cancelling its calls."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import trio

from client.errors import ApiError, BadRequest, NotFound
from client.grpc import (
    DETAILS_KEY,
    REASON_KEY,
    GrpcClient,
    GrpcError,
    SyncGrpcClient,
    subscribe_request,
)
from node.grpcapi.errors import error as node_error
from proto.raftchat.v1 import api_pb2 as v1
from proto.raftchat.v1 import api_pb2_grpc as v1_grpc
from proto.wkproto import ChannelType, ReasonCode


@dataclass
class FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    """What a failed call raises: a ``grpc.RpcError`` that is also a ``grpc.Call``."""

    status: grpc.StatusCode
    text: str = ""
    trailers: tuple[tuple[str, str | bytes], ...] = ()

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return self.text

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.trailers


def test_the_status_details_trailer_gives_code_message_reason_and_http_status() -> None:
    abort = node_error(404, "channel not found", int(ReasonCode.CHANNEL_NOT_EXIST))
    e = GrpcError.from_rpc_error(
        FakeRpcError(abort.code, abort.message, abort.trailing_metadata), "Messages.Send"
    )
    assert isinstance(e, NotFound) and isinstance(e, ApiError)  # the HTTP client's class too
    assert e.code == grpc.StatusCode.NOT_FOUND
    assert e.reason_code is ReasonCode.CHANNEL_NOT_EXIST
    assert (e.message, e.status, e.rpc) == ("channel not found", 404, "Messages.Send")
    assert str(e) == (
        "Messages.Send: NOT_FOUND: channel not found (reason <ReasonCode.CHANNEL_NOT_EXIST: 5>)"
    )


def test_the_error_info_message_wins_and_reason_zero_means_none() -> None:
    info = v1.ErrorInfo(reason_code=0, message="payload is required", http_status=400)
    status = v1.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="x")
    status.details.add().Pack(info)
    e = GrpcError.from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.INVALID_ARGUMENT, "other", ((DETAILS_KEY, status.SerializeToString()),)
        )
    )
    assert (e.message, e.reason_code, e.status) == ("payload is required", None, 400)
    assert isinstance(e, BadRequest)


def test_without_details_the_reason_metadata_is_used_and_unknown_codes_stay_ints() -> None:
    e = GrpcError.from_rpc_error(
        FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "refused", ((REASON_KEY, "19"),))
    )
    assert (e.code, e.message, e.reason_code, e.status) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "refused",
        ReasonCode.BAN,
        0,
    )
    newer = GrpcError.from_rpc_error(
        FakeRpcError(grpc.StatusCode.INTERNAL, "x", ((REASON_KEY, "250"),))
    )
    assert newer.reason_code == 250 and not isinstance(newer.reason_code, ReasonCode)


def test_undecodable_details_and_no_trailers_leave_the_bare_status() -> None:
    garbage = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down", ((DETAILS_KEY, b"\xff\xff"),))
    for error in (garbage, FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "late")):
        e = GrpcError.from_rpc_error(error)
        assert e.reason_code is None and e.status == 0 and e.message == error.text
        assert type(e) is GrpcError  # no HTTP status: no HTTP error class


def test_subscribe_requests() -> None:
    by_user = subscribe_request(uid="u1", positions={("g", 2): 7}, only_new=True)
    assert by_user.WhichOneof("target") == "uid" and by_user.only_new
    assert [(p.channel_id, p.channel_type, p.message_seq) for p in by_user.positions] == [
        ("g", 2, 7)
    ]
    by_channel = subscribe_request(channel=("bob", ChannelType.PERSON), login_uid="alice")
    assert by_channel.channel == v1.ChannelTarget(
        channel_id="bob", channel_type=1, login_uid="alice"
    )
    with pytest.raises(ValueError):
        subscribe_request()
    with pytest.raises(ValueError):
        subscribe_request(uid="u1", channel=("g", 2))


# --- against an in-process server -----------------------------------------------------------


@dataclass
class Messages(v1_grpc.MessagesServicer):  # type: ignore[misc]
    sends: list[v1.SendRequest] = field(default_factory=list)
    started: dict[str, threading.Event] = field(default_factory=dict)
    ended: dict[str, threading.Event] = field(default_factory=dict)
    """Per RPC that waits for its end: set once the call is over (cancelled, for these)."""

    def Send(self, request: v1.SendRequest, context: Any) -> v1.SendReply:
        if request.channel_id == "missing":
            abort = node_error(404, "channel not found", int(ReasonCode.CHANNEL_NOT_EXIST))
            context.set_trailing_metadata(abort.trailing_metadata)
            context.abort(abort.code, abort.message)
        self.sends.append(request)
        return v1.SendReply(message_seq=len(self.sends), client_msg_no=request.client_msg_no)

    def _track(self, name: str, context: Any) -> threading.Event:
        """``ended[name]``, set when the call is over (at once if it already is)."""
        if not context.add_callback(self.ended[name].set):
            self.ended[name].set()
        self.started[name].set()
        return self.ended[name]

    def GetBySeq(self, request: v1.GetBySeqRequest, context: Any) -> v1.Message:
        self._track("GetBySeq", context).wait(30)
        return v1.Message()

    def Subscribe(self, request: v1.SubscribeRequest, context: Any) -> Iterator[v1.SubscribeEvent]:
        ended = self._track("Subscribe", context)
        yield v1.SubscribeEvent(start=v1.Positions())
        yield v1.SubscribeEvent(message=v1.Message(message_seq=1, payload=b"one"))
        ended.wait(30)


@pytest.fixture
def server() -> Iterator[tuple[str, Messages]]:
    servicer = Messages()
    for name in ("GetBySeq", "Subscribe"):
        servicer.started[name] = threading.Event()
        servicer.ended[name] = threading.Event()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    v1_grpc.add_MessagesServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", servicer
    srv.stop(None)


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_unavailable_moves_to_the_next_target_and_stays_there(
    server: tuple[str, Messages],
) -> None:
    address, servicer = server
    with SyncGrpcClient([closed_port(), address], timeout_s=10) as rpc:
        sent = rpc.send("a", "g", ChannelType.GROUP, "hi")
        assert rpc.target == address and sent.message_seq == 1
        assert servicer.sends[0].payload == b"hi" and len(sent.client_msg_no) == 32
        with pytest.raises(GrpcError) as info:
            rpc.send("a", "missing", ChannelType.GROUP, b"x")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert info.value.reason_code is ReasonCode.CHANNEL_NOT_EXIST
    with SyncGrpcClient([closed_port()], timeout_s=10) as alone, pytest.raises(GrpcError) as down:
        alone.send("a", "g", ChannelType.GROUP, b"x")
    assert down.value.code == grpc.StatusCode.UNAVAILABLE


def test_every_call_has_the_clients_deadline(server: tuple[str, Messages]) -> None:
    address, servicer = server
    with SyncGrpcClient(address, timeout_s=0.3) as rpc, pytest.raises(GrpcError) as info:
        rpc.get_by_seq("a", "g", ChannelType.GROUP, 1)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert servicer.ended["GetBySeq"].wait(10)


def test_cancelling_a_trio_call_cancels_the_grpc_call(server: tuple[str, Messages]) -> None:
    address, servicer = server

    async def main() -> None:
        async with GrpcClient(address, timeout_s=30) as rpc, trio.open_nursery() as nursery:

            async def call() -> None:
                await rpc.get_by_seq("a", "g", ChannelType.GROUP, 1)

            nursery.start_soon(call)
            assert await trio.to_thread.run_sync(servicer.started["GetBySeq"].wait, 10)
            nursery.cancel_scope.cancel()
        assert await trio.to_thread.run_sync(servicer.ended["GetBySeq"].wait, 10)

    trio.run(main)


def test_trio_subscribe_yields_events_and_closing_it_cancels_the_stream(
    server: tuple[str, Messages],
) -> None:
    address, servicer = server

    async def main() -> None:
        async with GrpcClient(address) as rpc:
            async with aclosing(rpc.subscribe(uid="u1")) as events:
                start = await anext(events)
                assert start.WhichOneof("event") == "start"
                assert (await anext(events)).message.payload == b"one"
            assert await trio.to_thread.run_sync(servicer.ended["Subscribe"].wait, 10)

    trio.run(main)


def test_sync_subscribe_cancels_on_exit(server: tuple[str, Messages]) -> None:
    address, servicer = server
    with SyncGrpcClient(address) as rpc:
        with rpc.subscribe(channel=("g", 2)) as events:
            assert [next(events).WhichOneof("event") for _ in range(2)] == ["start", "message"]
        assert servicer.ended["Subscribe"].wait(10)
        assert list(events) == []  # a cancelled subscription ends
