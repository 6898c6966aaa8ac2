"""The gRPC client library against a real node: the blocking client's calls and raw stubs, a
refusal with its reason code, and the trio client's subscribe going live.

One node serves the module: each test has channels of its own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing

import grpc
import pytest
import trio

from client import GrpcClient, GrpcError, Refused, SyncGrpcClient
from launcher.devcluster import NodeProcess
from proto.raftchat.v1 import api_pb2 as v1
from proto.wkproto import ChannelType, ReasonCode
from tests.conftest import running_node

GROUP = ChannelType.GROUP
PERSON = ChannelType.PERSON


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    yield from running_node(tmp_path_factory.mktemp("clientgrpc"))


def test_sync_client_sends_and_reads(node: NodeProcess) -> None:
    with SyncGrpcClient(node.endpoints["grpc"]) as rpc:
        rpc.call(
            "Channels",
            "Create",
            v1.ChannelRequest(channel_id="team", channel_type=GROUP, subscribers=["alice", "bob"]),
        )
        sent = rpc.send("alice", "team", GROUP, "hello")
        assert sent.message_seq == 1
        again = rpc.send("alice", "team", GROUP, b"hello", client_msg_no=sent.client_msg_no)
        assert (again.message_id, again.message_seq) == (sent.message_id, 1)

        msg = rpc.get_by_seq("bob", "team", GROUP, 1)
        assert (msg.payload, msg.from_uid, msg.message_id) == (b"hello", "alice", sent.message_id)
        rpc.send("bob", "team", GROUP, b"second")
        page = rpc.sync("alice", "team", GROUP, 1)
        assert [m.payload for m in page.messages] == [b"hello", b"second"] and not page.more

        # The raw stubs are there too, for the calls without a convenience method.
        subscribers = rpc.channels.GetSubscribers(
            v1.Channel(channel_id="team", channel_type=GROUP), timeout=10
        )
        assert sorted(subscribers.uids) == ["alice", "bob"]


def test_refusals_carry_their_reason_code(node: NodeProcess) -> None:
    with SyncGrpcClient(node.endpoints["grpc"]) as rpc:
        with pytest.raises(GrpcError) as missing:
            rpc.send("alice", "no-such-group", GROUP, b"x")
        e = missing.value
        assert e.code == grpc.StatusCode.NOT_FOUND and e.status == 404
        assert e.reason_code is ReasonCode.CHANNEL_NOT_EXIST

        rpc.call(
            "Channels",
            "Create",
            v1.ChannelRequest(
                channel_id="muted", channel_type=GROUP, subscribers=["alice"], ban=True
            ),
        )
        with pytest.raises(Refused) as banned:  # a GrpcError is an ApiError like the HTTP ones
            rpc.send("alice", "muted", GROUP, b"x")
        assert isinstance(banned.value, GrpcError)
        assert banned.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert banned.value.reason_code is ReasonCode.BAN

        with pytest.raises(GrpcError) as bad:
            rpc.get_by_seq("", "team", GROUP, 1)
        assert (
            bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "login_uid" in bad.value.message
        )


def test_trio_subscribe_yields_what_is_sent(node: NodeProcess) -> None:
    async def main() -> None:
        async with GrpcClient(node.endpoints["grpc"]) as rpc:
            await rpc.send("carol", "dave", PERSON, b"before")
            stream = rpc.subscribe(channel=("carol", PERSON), login_uid="dave", only_new=True)
            async with aclosing(stream) as events:
                start = await anext(events)
                assert [(p.channel_id, p.message_seq) for p in start.start.positions] == [
                    ("carol", 1)
                ]
                sent = await rpc.send("carol", "dave", PERSON, b"live")
                got = (await anext(events)).message
                assert (got.message_seq, got.payload, got.message_id) == (
                    2,
                    b"live",
                    sent.message_id,
                )

            # Cancelling the task ends a stream that is waiting for a message.
            with trio.CancelScope() as scope:
                async with aclosing(rpc.subscribe(uid="dave", only_new=True)) as quiet:
                    assert (await anext(quiet)).WhichOneof("event") == "start"
                    scope.cancel()
                    await anext(quiet)
            assert scope.cancelled_caught

    trio.run(main)
