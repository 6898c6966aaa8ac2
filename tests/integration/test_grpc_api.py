"""The public gRPC API (proto/raftchat/v1/api.proto) against real nodes: each RPC briefly, the
error model, deadlines, any node answering in a cluster, and Subscribe resuming across the
kill of the node it streams from with no gap and no duplicate."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trio

from client.grpc import TokenInterceptor
from client.wkproto import open_client
from launcher.devcluster import NodeProcess
from node.grpcapi.errors import DETAILS_KEY, REASON_KEY
from proto.raftchat.v1 import api_pb2 as v1
from proto.raftchat.v1 import api_pb2_grpc as v1_grpc
from tests.conftest import ADMIN_TOKEN, Cluster, start_node

T = 10.0  # per-call deadline


@dataclass
class Stubs:
    channel: grpc.Channel
    messages: v1_grpc.MessagesStub
    channels: v1_grpc.ChannelsStub
    users: v1_grpc.UsersStub
    conversations: v1_grpc.ConversationsStub
    cluster: v1_grpc.ClusterStub


def connect(address: str, admin_token: str | None = None) -> Stubs:
    """Stubs on ``address``; ``Cluster`` calls carry ``admin_token`` (the API token is not
    needed: these nodes run without one)."""
    ch = grpc.intercept_channel(grpc.insecure_channel(address), TokenInterceptor(None, admin_token))
    return Stubs(
        ch,
        v1_grpc.MessagesStub(ch),
        v1_grpc.ChannelsStub(ch),
        v1_grpc.UsersStub(ch),
        v1_grpc.ConversationsStub(ch),
        v1_grpc.ClusterStub(ch),
    )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A lone node with an admin token, so that the Cluster RPCs reach their handlers."""
    proc = start_node(tmp_path, auth__admin_token=ADMIN_TOKEN)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def rpc(node: NodeProcess) -> Iterator[Stubs]:
    stubs = connect(node.endpoints["grpc"], ADMIN_TOKEN)
    yield stubs
    stubs.channel.close()


def error_of(call: Any) -> Any:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def error_info(e: Any) -> v1.ErrorInfo:
    status = v1.Status.FromString(dict(e.trailing_metadata())[DETAILS_KEY])
    info = v1.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def group(channel_id: str) -> v1.Channel:
    return v1.Channel(channel_id=channel_id, channel_type=2)


# ---- each RPC on one node ----------------------------------------------------------------------


def test_message_rpcs(rpc: Stubs) -> None:
    m = rpc.messages
    rpc.channels.Create(
        v1.ChannelRequest(channel_id="team", channel_type=2, subscribers=["alice", "bob"]),
        timeout=T,
    )
    first = v1.SendRequest(
        from_uid="alice", channel_id="team", channel_type=2, payload=b"\x00one", client_msg_no="c-1"
    )
    sent = m.Send(first, timeout=T)
    assert sent.message_seq == 1 and sent.message_idstr == str(sent.message_id)
    again = m.Send(first, timeout=T)
    assert (again.message_id, again.message_seq) == (sent.message_id, 1)  # deduplicated
    m.Send(
        v1.SendRequest(from_uid="bob", channel_id="team", channel_type=2, payload=b"two"), timeout=T
    )

    one = m.GetBySeq(
        v1.GetBySeqRequest(login_uid="bob", channel_id="team", channel_type=2, message_seq=1),
        timeout=T,
    )
    assert (one.payload, one.from_uid, one.client_msg_no, one.message_id) == (
        b"\x00one",
        "alice",
        "c-1",
        sent.message_id,
    )
    assert one.header.red_dot  # absent red_dot on a send means 1
    assert m.GetById(v1.GetByIdRequest(message_id=sent.message_id), timeout=T).message_seq == 1
    both = m.GetByIds(v1.GetByIdsRequest(message_ids=[sent.message_id, 12345]), timeout=T)
    assert [x.message_seq for x in both.messages] == [1]
    by_no = m.GetByClientMsgNo(
        v1.GetByClientMsgNoRequest(
            channel_id="team", channel_type=2, from_uid="alice", client_msg_no="c-1"
        ),
        timeout=T,
    )
    assert by_no.message_id == sent.message_id
    page = m.Sync(
        v1.SyncRequest(
            login_uid="bob", channel_id="team", channel_type=2, pull_mode=1, start_message_seq=1
        ),
        timeout=T,
    )
    assert [x.payload for x in page.messages] == [b"\x00one", b"two"] and not page.more
    assert m.GetMaxSeq(group("team"), timeout=T).message_seq == 2

    edited = m.Edit(
        v1.EditRequest(
            channel_id="team", channel_type=2, message_seq=2, from_uid="bob", payload=b"2!"
        ),
        timeout=T,
    )
    assert edited.version == 1
    got = m.GetBySeq(
        v1.GetBySeqRequest(login_uid="bob", channel_id="team", channel_type=2, message_seq=2),
        timeout=T,
    )
    assert (got.payload, got.edited) == (b"2!", 1)
    revoked = m.Revoke(
        v1.RevokeRequest(
            channel_id="team", channel_type=2, message_id=sent.message_id, from_uid="alice"
        ),
        timeout=T,
    )
    assert (revoked.message_seq, revoked.revoker) == (1, "alice")
    got = m.GetBySeq(
        v1.GetBySeqRequest(login_uid="bob", channel_id="team", channel_type=2, message_seq=1),
        timeout=T,
    )
    assert got.revoke and got.payload == b""
    m.DeleteForUser(
        v1.DeleteForUserRequest(uid="bob", channel_id="team", channel_type=2, message_seqs=[2]),
        timeout=T,
    )
    e = error_of(
        lambda: m.GetBySeq(
            v1.GetBySeqRequest(login_uid="bob", channel_id="team", channel_type=2, message_seq=2),
            timeout=T,
        )
    )
    assert e.code() == grpc.StatusCode.NOT_FOUND
    # Still there for alice.
    assert (
        m.GetBySeq(
            v1.GetBySeqRequest(login_uid="alice", channel_id="team", channel_type=2, message_seq=2),
            timeout=T,
        ).payload
        == b"2!"
    )

    # A batch of person messages: each reader sees the channel under the peer's uid.
    batch = m.SendBatch(
        v1.SendBatchRequest(from_uid="news", subscribers=["alice", "carol"], payload=b"extra"),
        timeout=T,
    )
    assert (list(batch.fail_uids), list(batch.reason)) == ([], [])
    seen = m.GetBySeq(
        v1.GetBySeqRequest(login_uid="alice", channel_id="news", channel_type=1, message_seq=1),
        timeout=T,
    )
    assert (seen.channel_id, seen.payload) == ("news", b"extra")

    # History: the given sender and time, after the head; importing it again stores nothing.
    head = m.GetMaxSeq(group("team"), timeout=T).message_seq
    then = int(time.time()) - 3600
    old = v1.ImportMessage(from_uid="carol", client_msg_no="old-1", timestamp=then, payload=b"x")
    request = v1.ImportRequest(channel_id="team", channel_type=2, messages=[old])
    (imported,) = m.Import(request, timeout=T).messages
    assert (imported.message_seq, imported.duplicate) == (head + 1, False)
    assert imported.message_idstr == str(imported.message_id)
    assert m.Import(request, timeout=T).messages[0].duplicate
    got = m.GetBySeq(
        v1.GetBySeqRequest(
            login_uid="bob", channel_id="team", channel_type=2, message_seq=head + 1
        ),
        timeout=T,
    )
    assert (got.from_uid, got.timestamp, got.payload) == ("carol", then, b"x")


def test_channel_rpcs(rpc: Stubs) -> None:
    c = rpc.channels
    c.Create(
        v1.ChannelRequest(channel_id="g1", channel_type=2, subscribers=["a", "b"], send_ban=True),
        timeout=T,
    )
    info = c.GetInfo(group("g1"), timeout=T)
    assert (info.send_ban, info.ban) == (True, False)
    c.Update(
        v1.ChannelRequest(channel_id="g1", channel_type=2, ban=True, send_ban=False), timeout=T
    )
    info = c.GetInfo(group("g1"), timeout=T)
    assert (info.send_ban, info.ban) == (False, True)
    e = error_of(
        lambda: c.Update(
            v1.ChannelRequest(channel_id="g1", channel_type=2, subscribers=["x"]), timeout=T
        )
    )
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "subscribers" in e.details()

    c.AddSubscribers(
        v1.SubscribersRequest(channel_id="g1", channel_type=2, subscribers=["c"]), timeout=T
    )
    assert list(c.GetSubscribers(group("g1"), timeout=T).uids) == ["a", "b", "c"]
    c.RemoveSubscribers(
        v1.SubscribersRequest(channel_id="g1", channel_type=2, subscribers=["a"]), timeout=T
    )
    assert list(c.GetSubscribers(group("g1"), timeout=T).uids) == ["b", "c"]
    c.AddSubscribers(
        v1.SubscribersRequest(channel_id="g1", channel_type=2, subscribers=["z"], reset=True),
        timeout=T,
    )
    assert list(c.GetSubscribers(group("g1"), timeout=T).uids) == ["z"]
    c.RemoveAllSubscribers(group("g1"), timeout=T)
    assert list(c.GetSubscribers(group("g1"), timeout=T).uids) == []

    for kind in ("Deny", "Allow"):
        add, set_, remove = (
            getattr(c, f"{verb}{kind}List") for verb in ("AddTo", "Set", "RemoveFrom")
        )
        clear, get = getattr(c, f"Clear{kind}List"), getattr(c, f"Get{kind}List")
        add(v1.ListRequest(channel_id="g1", channel_type=2, uids=["m", "k"]), timeout=T)
        assert list(get(group("g1"), timeout=T).uids) == ["k", "m"]
        remove(v1.ListRequest(channel_id="g1", channel_type=2, uids=["k"]), timeout=T)
        assert list(get(group("g1"), timeout=T).uids) == ["m"]
        set_(v1.ListRequest(channel_id="g1", channel_type=2, uids=["q"]), timeout=T)
        assert list(get(group("g1"), timeout=T).uids) == ["q"]
        clear(group("g1"), timeout=T)
        assert list(get(group("g1"), timeout=T).uids) == []

    c.Delete(group("g1"), timeout=T)
    e = error_of(lambda: c.GetInfo(group("g1"), timeout=T))
    assert e.code() == grpc.StatusCode.NOT_FOUND


def test_user_and_conversation_rpcs(node: NodeProcess, rpc: Stubs) -> None:
    rpc.users.SetToken(v1.TokenRequest(uid="erin", token="te", device_flag=1), timeout=T)
    host, port = node.endpoints["tcp"].rsplit(":", 1)

    def online(uids: list[str]) -> list[tuple[str, int, int]]:
        reply = rpc.users.OnlineStatus(v1.OnlineStatusRequest(uids=uids), timeout=T)
        return [(x.uid, x.device_flag, x.online) for x in reply.entries]

    async def main() -> None:
        async with open_client(host, int(port), uid="erin", token="te", device_flag=1) as client:
            assert await trio.to_thread.run_sync(online, ["erin", "frank"]) == [("erin", 1, 1)]
            # device_flag 0 (APP) is not "every platform": erin's WEB session stays.
            quit_app = v1.DeviceQuitRequest(uid="erin", device_flag=0)
            await trio.to_thread.run_sync(lambda: rpc.users.DeviceQuit(quit_app, timeout=T))
            assert await trio.to_thread.run_sync(online, ["erin"]) == [("erin", 1, 1)]
            # Absent: every platform. The WEB session is kicked.
            await trio.to_thread.run_sync(
                lambda: rpc.users.DeviceQuit(v1.DeviceQuitRequest(uid="erin"), timeout=T)
            )
            await client.wait_closed(T)

    trio.run(main)

    m, cv = rpc.messages, rpc.conversations
    for text in (b"1", b"2", b"3"):
        m.Send(
            v1.SendRequest(from_uid="ann", channel_id="ben", channel_type=1, payload=text),
            timeout=T,
        )

    def ben_rows() -> dict[str, v1.Conversation]:
        reply = cv.Sync(v1.ConversationSyncRequest(uid="ben", msg_count=1), timeout=T)
        return {r.channel_id: r for r in reply.conversations}

    row = ben_rows()["ann"]
    assert (row.unread, row.last_msg_seq, [x.payload for x in row.recents]) == (3, 3, [b"3"])
    # msg_count is optional: 0 asks for no recents (absent would mean 20).
    assert (
        not cv.Sync(v1.ConversationSyncRequest(uid="ben", msg_count=0), timeout=T)
        .conversations[0]
        .recents
    )
    cv.SetUnread(
        v1.ConversationRequest(uid="ben", channel_id="ann", channel_type=1, unread=7), timeout=T
    )
    assert ben_rows()["ann"].unread == 7
    cv.ClearUnread(v1.ConversationRequest(uid="ben", channel_id="ann", channel_type=1), timeout=T)
    assert ben_rows()["ann"].unread == 0
    cv.Delete(v1.ConversationRequest(uid="ben", channel_id="ann", channel_type=1), timeout=T)
    assert "ann" not in ben_rows()
    e = error_of(
        lambda: cv.SetUnread(
            v1.ConversationRequest(uid="ben", channel_id="ann", channel_type=1), timeout=T
        )
    )
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "unread" in e.details()


def test_errors_carry_the_reason_code_and_name_the_field(rpc: Stubs) -> None:
    e = error_of(
        lambda: rpc.messages.Send(
            v1.SendRequest(from_uid="a", channel_id="nowhere", channel_type=2, payload=b"x"),
            timeout=T,
        )
    )
    assert e.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(e)
    assert (info.reason_code, info.http_status) == (5, 404)  # ChannelNotExist
    assert dict(e.trailing_metadata())[REASON_KEY] == "5"

    rpc.channels.Create(v1.ChannelRequest(channel_id="banned", channel_type=2, ban=True), timeout=T)
    e = error_of(
        lambda: rpc.messages.Send(
            v1.SendRequest(from_uid="a", channel_id="banned", channel_type=2, payload=b"x"),
            timeout=T,
        )
    )
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED and error_info(e).reason_code == 19

    e = error_of(
        lambda: rpc.messages.Send(
            v1.SendRequest(from_uid="a", channel_id="banned", channel_type=99, payload=b"x"),
            timeout=T,
        )
    )
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "channel_type" in e.details()
    e = error_of(lambda: rpc.users.SetToken(v1.TokenRequest(uid="bad uid", token="t"), timeout=T))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "uid" in e.details()
    assert error_info(e).http_status == 400

    e = error_of(lambda: rpc.cluster.Leave(v1.LeaveRequest(node_id=9), timeout=T))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    e = error_of(lambda: rpc.cluster.Leave(v1.LeaveRequest(node_id=1), timeout=T))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "cluster.replicas" in e.details()


def test_payloads_too_deep_or_with_too_long_numbers_are_invalid_argument(rpc: Stubs) -> None:
    """The HTTP handlers' JSON limits hold on the gRPC path too: the one JSON a gRPC request
    carries unparsed is a message payload."""
    rpc.channels.Create(v1.ChannelRequest(channel_id="open", channel_type=2), timeout=T)
    for payload, words in (
        (b'{"type":1,"content":"x","a":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper"),
        (b'{"type":1001,"content":"fake notice","n":' + b"9" * 5000 + b"}", "4300 digits"),
    ):
        e = error_of(
            lambda payload=payload: rpc.messages.Send(
                v1.SendRequest(from_uid="a", channel_id="open", channel_type=2, payload=payload),
                timeout=T,
            )
        )
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.details(), e
        assert error_info(e).http_status == 400


def test_a_subscribe_deadline_ends_the_stream_with_deadline_exceeded(rpc: Stubs) -> None:
    rpc.channels.Create(v1.ChannelRequest(channel_id="quiet", channel_type=2), timeout=T)
    stream = rpc.messages.Subscribe(
        v1.SubscribeRequest(channel=v1.ChannelTarget(channel_id="quiet", channel_type=2)),
        timeout=1.0,
    )
    started = time.monotonic()
    assert next(stream).WhichOneof("event") == "start"
    e = error_of(lambda: next(stream))
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5
    # The node is fine afterwards.
    assert rpc.cluster.Status(v1.Empty(), timeout=T).node_id == 1


def test_subscribe_starts_where_asked_and_goes_live(rpc: Stubs) -> None:
    m = rpc.messages
    rpc.channels.Create(
        v1.ChannelRequest(channel_id="live", channel_type=2, subscribers=["u1", "u2"]), timeout=T
    )
    for i in range(3):
        m.Send(
            v1.SendRequest(from_uid="u1", channel_id="live", channel_type=2, payload=b"%d" % i),
            timeout=T,
        )
    target = v1.ChannelTarget(channel_id="live", channel_type=2)
    resumed = m.Subscribe(
        v1.SubscribeRequest(channel=target, positions=[v1.Position(message_seq=1)]), timeout=30
    )
    fresh = m.Subscribe(v1.SubscribeRequest(channel=target, only_new=True), timeout=30)
    user = m.Subscribe(v1.SubscribeRequest(uid="u2", only_new=True), timeout=30)
    assert [p.message_seq for p in next(resumed).start.positions] == [1]
    assert [(p.channel_id, p.message_seq) for p in next(fresh).start.positions] == [("live", 3)]
    assert [(p.channel_id, p.message_seq) for p in next(user).start.positions] == [("live", 3)]
    assert [next(resumed).message.message_seq for _ in range(2)] == [2, 3]
    m.Send(
        v1.SendRequest(from_uid="u1", channel_id="live", channel_type=2, payload=b"new"), timeout=T
    )
    m.Send(v1.SendRequest(from_uid="u1", channel_id="u2", channel_type=1, payload=b"dm"), timeout=T)
    for stream in (resumed, fresh):
        got = next(stream).message
        assert (got.message_seq, got.payload) == (4, b"new")
    got_user = [(x.message.channel_id, x.message.message_seq) for x in (next(user), next(user))]
    assert got_user == [("live", 4), ("u1", 1)]  # a channel new to the stream: from its start
    for stream in (resumed, fresh, user):
        stream.cancel()


# ---- a cluster ---------------------------------------------------------------------------------


def grpc_address(cluster: Cluster, node_id: int) -> str:
    return f"{cluster.hosts[node_id]}:5002"


def test_any_node_answers_and_forwards(cluster3: Cluster) -> None:
    stubs = {i: connect(grpc_address(cluster3, i), ADMIN_TOKEN) for i in cluster3.hosts}
    stubs[1].channels.Create(
        v1.ChannelRequest(channel_id="room", channel_type=2, subscribers=["a", "b"]), timeout=T
    )
    seqs = []
    for i in (1, 2, 3):
        sent = stubs[i].messages.Send(
            v1.SendRequest(from_uid="a", channel_id="room", channel_type=2, payload=b"%d" % i),
            timeout=T,
        )
        seqs.append(sent.message_seq)
    assert seqs == [1, 2, 3]
    for i in (1, 2, 3):
        page = stubs[i].messages.Sync(
            v1.SyncRequest(
                login_uid="b", channel_id="room", channel_type=2, pull_mode=1, start_message_seq=1
            ),
            timeout=T,
        )
        assert [x.payload for x in page.messages] == [b"1", b"2", b"3"]
        status = stubs[i].cluster.Status(v1.Empty(), timeout=T)
        assert status.node_id == i and sorted(status.nodes) == ["1", "2", "3"]
    e = error_of(
        lambda: stubs[2].cluster.Join(v1.JoinRequest(node_id=1, host="10.9.9.9"), timeout=T)
    )
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED  # a node joins by itself, never by this
    assert "joins by itself" in e.details()
    for s in stubs.values():
        s.channel.close()


@dataclass
class Follower:
    """A Subscribe client that, when its stream breaks, resumes on the next node with the
    positions it holds: what a real client does after losing its node."""

    cluster: Cluster
    request: v1.SubscribeRequest
    nodes: list[int]
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    received: list[tuple[str, int, bytes]] = field(default_factory=list)
    streams_used: list[int] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)
    stop: bool = False
    current: Any = None

    def run(self) -> None:
        attempt = 0
        while not self.stop:
            node = self.nodes[attempt % len(self.nodes)]
            attempt += 1
            if not self.cluster.nodes[node].running:
                continue
            request = v1.SubscribeRequest()
            request.CopyFrom(self.request)
            request.ClearField("positions")
            request.only_new = False
            request.positions.extend(
                v1.Position(channel_id=c, channel_type=t, message_seq=s)
                for (c, t), s in self.positions.items()
            )
            channel = grpc.insecure_channel(grpc_address(self.cluster, node))
            try:
                self.current = channel.unary_stream(
                    "/raftchat.v1.Messages/Subscribe",
                    request_serializer=v1.SubscribeRequest.SerializeToString,
                    response_deserializer=v1.SubscribeEvent.FromString,
                )(request, timeout=120)
                self.streams_used.append(node)
                for event in self.current:
                    self.on_event(event)
            except grpc.RpcError:
                pass  # the node went away (or is electing): resume elsewhere
            finally:
                channel.close()

    def on_event(self, event: v1.SubscribeEvent) -> None:
        with self.changed:
            if event.WhichOneof("event") == "start":
                for p in event.start.positions:
                    self.positions.setdefault((p.channel_id, p.channel_type), p.message_seq)
                self.started.set()
            else:
                msg = event.message
                self.received.append((msg.channel_id, msg.message_seq, msg.payload))
                self.positions[(msg.channel_id, msg.channel_type)] = msg.message_seq
            self.changed.notify_all()

    def wait_for(self, count: int, timeout_s: float) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.received) >= count, timeout_s), (
                f"received {len(self.received)} of {count}: {self.received}"
            )

    def close(self) -> None:
        self.stop = True
        if self.current is not None:
            self.current.cancel()


def send_until_accepted(http: httpx.Client, body: dict[str, Any], deadline_s: float = 60) -> int:
    """Send, retrying a 503 (an election after the kill) with the same client_msg_no."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            resp = http.post("/message/send", json=body)
            if resp.status_code == 200:
                return int(resp.json()["message_seq"])
            assert resp.status_code == 503, resp.text
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"send {body['client_msg_no']} never accepted"
        time.sleep(0.1)  # backoff between retries, not synchronisation


def test_subscribe_resumes_across_a_node_kill_with_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3)
    cluster.start()
    followers: list[Follower] = []
    try:
        http = {
            i: httpx.Client(base_url=f"http://{h}:5001", timeout=15)
            for i, h in cluster.hosts.items()
        }
        assert (
            http[1]
            .post(
                "/channel",
                json={"channel_id": "room", "channel_type": 2, "subscribers": ["ann", "bob"]},
            )
            .status_code
            == 200
        )
        # The stream node is the leader of the room's slot group: the kill costs both the
        # stream and the leader, the harder case for the sends and for the resume.
        victim = cluster.leader_of_key("room", via=1)
        others = [i for i in cluster.hosts if i != victim]
        followers = [
            Follower(
                cluster,
                v1.SubscribeRequest(channel=v1.ChannelTarget(channel_id="room", channel_type=2)),
                [victim, *others],
            ),
            Follower(cluster, v1.SubscribeRequest(uid="bob", only_new=True), [victim, *others]),
        ]
        for f in followers:
            threading.Thread(target=f.run, daemon=True).start()
            assert f.started.wait(T)
        assert followers[0].streams_used == [victim] and followers[1].streams_used == [victim]

        n = 30
        sender = http[others[0]]
        for i in range(n):
            # Alternate the group and bob's person channel with ann.
            channel = (
                {"channel_id": "room", "channel_type": 2}
                if i % 2 == 0
                else {"channel_id": "bob", "channel_type": 1}
            )
            body = {"from_uid": "ann", "payload": "eA==", "client_msg_no": f"m-{i}", **channel}
            send_until_accepted(sender, body)
            if i == 9:
                followers[0].wait_for(5, T)  # the streams are live on the victim...
                followers[1].wait_for(10, T)
                cluster.nodes[victim].kill()  # ...when it dies mid-run
        followers[0].wait_for(n // 2, 60)
        followers[1].wait_for(n, 60)
        room = [s for c, s, _ in followers[0].received]
        assert room == list(range(1, n // 2 + 1)), room
        by_channel: dict[str, list[int]] = {}
        for c, s, _ in followers[1].received:
            by_channel.setdefault(c, []).append(s)
        assert by_channel == {
            "room": list(range(1, n // 2 + 1)),
            "ann": list(range(1, n // 2 + 1)),
        }, by_channel
        for f in followers:
            assert len(f.streams_used) >= 2 and f.streams_used[0] == victim, f.streams_used
            assert f.streams_used[-1] != victim
    finally:
        for f in followers:
            f.close()
        cluster.stop()
