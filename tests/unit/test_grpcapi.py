"""The public gRPC API's adapter in process: JSON conversion, the RPC -> route table, the error
model, deadlines and per-service authentication, with a stand-in HTTP router. The real
handlers behind it are exercised on real nodes in tests/integration/test_grpc_api.py."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
import trio

from client.grpc import GrpcError, SyncGrpcClient
from cluster.bridge import GrpcServer, GrpcService
from cluster.peerauth import PeerKeys
from node.config import Config
from node.config_sections import AuthSection
from node.grpcapi.convert import from_json, to_json
from node.grpcapi.errors import DETAILS_KEY, REASON_KEY
from node.grpcapi.rpcs import RPCS
from node.grpcapi.servicer import PublicApi
from node.grpcapi.subscribe import LiveFeed
from node.http.api import build_router
from node.http.auth import Credentials
from node.http.common import ApiContext
from node.http.server import ApiError, Request, Response, Router
from proto.raftchat.peer.v1 import peer_pb2_grpc
from proto.raftchat.v1 import api_pb2, api_pb2_grpc

KEYS = PeerKeys.of("cluster-secret")

# ---- conversion --------------------------------------------------------------------------------


def test_request_json_has_the_set_fields_only_with_http_shapes() -> None:
    request = api_pb2.SendRequest(
        from_uid="alice",
        channel_id="team",
        channel_type=2,
        payload=b"\x00hi\xff",
        header=api_pb2.Header(red_dot=False),
    )
    assert to_json(request) == {
        "from_uid": "alice",
        "channel_id": "team",
        "channel_type": 2,
        "payload": base64.b64encode(b"\x00hi\xff").decode(),
        # An explicitly cleared optional flag is sent as 0; the unset ones stay absent, so
        # the handler's own default (red_dot 1) applies only when the caller said nothing.
        "header": {"red_dot": 0},
    }
    # Presence: an optional field at 0 is "0", not "absent" (device_quit: -1 is every platform).
    assert to_json(api_pb2.DeviceQuitRequest(uid="u", device_flag=0)) == {
        "uid": "u",
        "device_flag": 0,
    }
    assert to_json(api_pb2.DeviceQuitRequest(uid="u")) == {"uid": "u"}
    assert to_json(api_pb2.LeaveRequest(node_id=3, force=True)) == {"node_id": 3, "force": 1}
    assert to_json(api_pb2.DeleteForUserRequest(uid="b", message_seqs=[3, 4])) == {
        "uid": "b",
        "message_seqs": [3, 4],
    }


def test_answer_json_fills_the_reply_skipping_unknown_members_and_nulls() -> None:
    answer = {
        "header": {"no_persist": 0, "red_dot": 1, "sync_once": 0},
        "message_id": 399722134131204096,
        "message_idstr": "399722134131204096",
        "message_seq": 7,
        "payload": base64.b64encode(b"yo").decode(),
        "revoke": 1,
        "channel_id": "alice",
        "some_future_member": {"x": 1},
        "topic": None,
    }
    message = from_json(answer, api_pb2.Message())
    assert message.message_id == 399722134131204096 and message.message_seq == 7
    assert message.payload == b"yo" and message.revoke is True
    assert message.header.red_dot and not message.header.sync_once
    assert message.header.HasField("no_persist")

    status = from_json(
        {
            "node_id": 2,
            "nodes": {"1": "10.0.0.1", "2": "10.0.0.2"},
            "groups": [
                {"group": 0, "replicas": [1, 2], "leader": None, "local": True},
                {"group": 1, "replicas": [2], "leader": 2, "commit_ms": {"p50": 1.5, "n": 3}},
            ],
            "slot_table": [1, 1, 2],
        },
        api_pb2.ClusterStatus(),
    )
    assert dict(status.nodes) == {"1": "10.0.0.1", "2": "10.0.0.2"}
    assert not status.groups[0].HasField("leader") and status.groups[1].leader == 2
    assert status.groups[1].commit_ms.p50 == 1.5 and list(status.slot_table) == [1, 1, 2]
    # A document where the proto keeps JSON text.
    join = from_json({"status": 200, "placement": {"version": 3}}, api_pb2.JoinReply())
    assert join.placement == '{"version":3}'


def test_every_rpc_of_the_proto_maps_to_an_http_route() -> None:
    routes = set(build_router(cast(ApiContext, SimpleNamespace(config=Config()))).paths())
    for service in api_pb2.DESCRIPTOR.services_by_name.values():
        declared = {m.name for m in service.methods} - {"Subscribe"}
        assert declared == set(RPCS[service.name]), service.name
        for name, rpc in RPCS[service.name].items():
            assert (rpc.method, rpc.path) in routes, (service.name, name, rpc)


# ---- served in process -----------------------------------------------------------------------


API_TOKEN = "api-token-1"
ADMIN_TOKEN = "admin-token-1"
BEARER = (("authorization", f"Bearer {API_TOKEN}"),)


def fake_http(
    routes: dict[tuple[str, str], Callable[[Request], Any]], *, multi_node: bool = False
) -> Router:
    """A router with the HTTP API's credentials: API_TOKEN for the product, ADMIN_TOKEN for
    ``/cluster/*``."""
    auth = AuthSection(api_token=API_TOKEN, admin_token=ADMIN_TOKEN)
    router = Router(Credentials(auth, lambda: multi_node))
    for (method, path), handler in routes.items():
        router.add(method, path, handler)
    return router


@asynccontextmanager
async def serving(http: Router) -> AsyncIterator[str]:
    """The public API (over ``http``) on a server of its own, as a node runs it."""
    api = PublicApi(LiveFeed())
    api.attach(http, cast(ApiContext, None))
    server = GrpcServer.of_services("127.0.0.1:0", api.services(), what="public gRPC")
    async with server.serving():
        yield server.address


def call_in_thread(fn: Callable[[], Any]) -> Any:
    return trio.to_thread.run_sync(fn)


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def test_http_errors_become_status_codes_with_the_reason_in_the_details() -> None:
    async def refused(req: Request) -> Response:
        raise ApiError(403, "send refused: Ban", reason=19)

    async def bad(req: Request) -> Response:
        assert req.json() == {"channel_type": 2}
        raise ApiError(400, "channel_id is required")

    async def missing(req: Request) -> Response:
        return Response(404, {"status": 404})

    http = fake_http(
        {
            ("POST", "/message/send"): refused,
            ("POST", "/channel"): bad,
            ("POST", "/message"): missing,
        }
    )

    async def main() -> None:
        async with serving(http) as address:

            def calls() -> None:
                with grpc.insecure_channel(address) as channel:
                    messages = api_pb2_grpc.MessagesStub(channel)
                    channels = api_pb2_grpc.ChannelsStub(channel)
                    e: Any = rpc_error(
                        lambda: messages.Send(api_pb2.SendRequest(), timeout=5, metadata=BEARER)
                    )
                    assert e.code() == grpc.StatusCode.PERMISSION_DENIED
                    assert e.details() == "send refused: Ban"
                    trailers = dict(e.trailing_metadata())
                    assert trailers[REASON_KEY] == "19"
                    status = api_pb2.Status.FromString(trailers[DETAILS_KEY])
                    assert status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
                    info = api_pb2.ErrorInfo()
                    assert status.details[0].Unpack(info)
                    assert (info.reason_code, info.http_status) == (19, 403)
                    assert info.message == "send refused: Ban"

                    e = rpc_error(
                        lambda: channels.Create(
                            api_pb2.ChannelRequest(channel_type=2), timeout=5, metadata=BEARER
                        )
                    )
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert e.details() == "channel_id is required"
                    assert REASON_KEY not in dict(e.trailing_metadata())

                    e = rpc_error(
                        lambda: messages.GetById(
                            api_pb2.GetByIdRequest(message_id=1), timeout=5, metadata=BEARER
                        )
                    )
                    assert e.code() == grpc.StatusCode.NOT_FOUND

            await call_in_thread(calls)

    trio.run(main)


def test_deadline_cancels_the_handler_and_answers_deadline_exceeded() -> None:
    cancelled = trio.Event()

    async def stuck(req: Request) -> Response:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    async def main() -> None:
        async with serving(fake_http({("POST", "/message/send"): stuck})) as address:

            def call() -> grpc.RpcError:
                with grpc.insecure_channel(address) as channel:
                    stub = api_pb2_grpc.MessagesStub(channel)
                    return rpc_error(
                        lambda: stub.Send(api_pb2.SendRequest(), timeout=0.5, metadata=BEARER)
                    )

            e: Any = await call_in_thread(call)
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with trio.fail_after(5):
                await cancelled.wait()  # the server stopped the work, not only the client

    trio.run(main)


def test_public_services_need_the_api_token_and_the_cluster_service_the_admin_token() -> None:
    async def status(req: Request) -> Response:
        return Response(200, {"node_id": 7})

    async def send(req: Request) -> Response:
        return Response(200, {"message_id": 1, "message_seq": 1, "client_msg_no": "c"})

    http = fake_http({("GET", "/cluster/status"): status, ("POST", "/message/send"): send})

    async def main() -> None:
        async with serving(http) as address:

            def calls() -> None:
                with grpc.insecure_channel(address) as channel:
                    messages = api_pb2_grpc.MessagesStub(channel)
                    cluster = api_pb2_grpc.ClusterStub(channel)
                    request = api_pb2.SendRequest()
                    assert messages.Send(request, timeout=5, metadata=BEARER).message_seq == 1
                    for metadata in (
                        (),
                        (("authorization", "Bearer wrong"),),
                        (("authorization", API_TOKEN),),  # no scheme
                        (("authorization", f"Bearer {ADMIN_TOKEN}"),),  # not for the product
                        (("x-raftchat-peer", API_TOKEN),),
                    ):
                        e: Any = rpc_error(
                            lambda m=metadata: messages.Send(request, timeout=5, metadata=m)
                        )
                        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
                        assert API_TOKEN not in e.details() and ADMIN_TOKEN not in e.details()
                    # The Cluster service takes the admin token, and only it.
                    e = rpc_error(
                        lambda: cluster.Status(api_pb2.Empty(), timeout=5, metadata=BEARER)
                    )
                    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
                    admin = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
                    assert cluster.Status(api_pb2.Empty(), timeout=5, metadata=admin).node_id == 7
                    # The stream checks before anything is started.
                    stream = messages.Subscribe(api_pb2.SubscribeRequest(uid="u"), timeout=5)
                    e = rpc_error(lambda: next(stream))
                    assert e.code() == grpc.StatusCode.UNAUTHENTICATED

            await call_in_thread(calls)

    trio.run(main)


def test_the_client_library_sends_the_api_and_admin_tokens_as_bearer_metadata() -> None:
    async def status(req: Request) -> Response:
        return Response(200, {"node_id": 7})

    async def send(req: Request) -> Response:
        return Response(200, {"message_id": 1, "message_seq": 5, "client_msg_no": "c"})

    http = fake_http({("GET", "/cluster/status"): status, ("POST", "/message/send"): send})

    async def main() -> None:
        async with serving(http) as address:

            def calls() -> None:
                tokens = {"api_token": API_TOKEN, "admin_token": ADMIN_TOKEN}
                with SyncGrpcClient(address, **tokens) as rpc:
                    assert rpc.send("a", "b", 1, b"x").message_seq == 5
                    assert rpc.call("Cluster", "Status", api_pb2.Empty()).node_id == 7
                with SyncGrpcClient(address) as rpc:
                    with pytest.raises(GrpcError) as info:
                        rpc.send("a", "b", 1, b"x")
                    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
                    assert info.value.status == 401

            await call_in_thread(calls)

    trio.run(main)


# ---- server streaming through the bridge -------------------------------------------------------


def stream_server(
    handler: Callable[[Any, Any], Any],
) -> GrpcServer:
    async def unused(req: Any) -> Any:
        raise AssertionError

    service = GrpcService(
        add_to_server=api_pb2_grpc.add_MessagesServicer_to_server,
        servicer_base=api_pb2_grpc.MessagesServicer,
        handlers={"Send": unused},
        streams={"Subscribe": handler},
    )
    return GrpcServer(
        bind="127.0.0.1:0",
        peer_auth=KEYS,
        add_to_server=peer_pb2_grpc.add_PeerServicer_to_server,
        servicer_base=peer_pb2_grpc.PeerServicer,
        handlers={},
        extra_services=[service],
    )


def event(seq: int) -> api_pb2.SubscribeEvent:
    return api_pb2.SubscribeEvent(message=api_pb2.Message(message_seq=seq))


def test_a_stream_delivers_every_item_in_order_past_the_credit_window_then_its_status() -> None:
    async def handler(request: Any, emit: Any) -> None:
        for seq in range(1, 301):
            await emit(event(seq))
        raise ApiError(503, "x") from None  # not a GrpcAbort: answered INTERNAL

    async def main() -> None:
        server = stream_server(handler)
        async with server.serving():

            def read() -> tuple[list[int], Any]:
                with grpc.insecure_channel(server.address) as channel:
                    stub = api_pb2_grpc.MessagesStub(channel)
                    got = []
                    stream = stub.Subscribe(api_pb2.SubscribeRequest(uid="u"), timeout=10)
                    try:
                        for e in stream:
                            got.append(e.message.message_seq)
                    except grpc.RpcError as error:
                        return got, error
                    return got, None

            got, error = await call_in_thread(read)
            assert got == list(range(1, 301))
            assert error is not None and error.code() == grpc.StatusCode.INTERNAL

    trio.run(main)


def test_a_client_that_goes_away_cancels_the_stream_handler() -> None:
    cancelled = trio.Event()

    async def handler(request: Any, emit: Any) -> None:
        try:
            await emit(event(1))
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async def main() -> None:
        server = stream_server(handler)
        async with server.serving():

            def read_one_then_cancel() -> int:
                with grpc.insecure_channel(server.address) as channel:
                    stub = api_pb2_grpc.MessagesStub(channel)
                    stream = stub.Subscribe(api_pb2.SubscribeRequest(uid="u"))
                    seq = int(next(stream).message.message_seq)
                    stream.cancel()
                    return seq

            assert await call_in_thread(read_one_then_cancel) == 1
            with trio.fail_after(5):
                await cancelled.wait()

    trio.run(main)


def test_the_public_port_refuses_what_no_check_has_seen_yet() -> None:
    """grpcio decodes a request before any check of ours: the public server takes no more
    than the HTTP API's body limit, and a node not yet attached to its API fails closed."""
    sends: list[Request] = []

    async def send(req: Request) -> Response:
        sends.append(req)
        return Response(200, {"message_id": 1, "message_seq": 1, "client_msg_no": "c"})

    async def main() -> None:
        api = PublicApi(LiveFeed())
        server = GrpcServer.of_services(
            "127.0.0.1:0", api.services(), what="public gRPC", max_message_bytes=4096
        )
        async with server.serving():

            def calls() -> None:
                with grpc.insecure_channel(server.address) as channel:
                    messages = api_pb2_grpc.MessagesStub(channel)
                    small = api_pb2.SendRequest(payload=b"x" * 100)
                    e: Any = rpc_error(lambda: messages.Send(small, timeout=5, metadata=BEARER))
                    assert e.code() == grpc.StatusCode.UNAVAILABLE  # not attached: closed
                    api.attach(fake_http({("POST", "/message/send"): send}), cast(ApiContext, None))
                    assert messages.Send(small, timeout=5, metadata=BEARER).message_seq == 1
                    big = api_pb2.SendRequest(payload=b"x" * 8192)
                    e = rpc_error(lambda: messages.Send(big, timeout=5, metadata=BEARER))
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            await call_in_thread(calls)

    trio.run(main)
    assert len(sends) == 1
