"""The reconnecting session against real nodes: after a node is killed, a session fails over
or waits for the node to come back, catches up by seq, and delivers every message exactly once
and in order. Also the blocking facade and the ways a session ends."""

from __future__ import annotations

import pytest
import trio

from client.backoff import Backoff
from client.errors import ConnectRefused, Disconnected
from client.http import SyncHttpClient
from client.models import Message
from client.session import Session, open_session
from client.sync import connect_sync
from launcher.devcluster import NodeProcess
from proto.wkproto import ChannelType, ReasonCode
from tests.conftest import Cluster

GROUP = ChannelType.GROUP
QUICK = Backoff(0.05, 0.5)


async def receive_n(session: Session, n: int, timeout_s: float = 30.0) -> list[Message]:
    return [await session.receive(timeout_s) for _ in range(n)]


async def nothing_more(session: Session) -> None:
    """No further message (a duplicate would come right after the others)."""
    with pytest.raises(trio.TooSlowError):
        await session.receive(1.0)


def test_sessions_resume_across_a_killed_node_without_gap_or_duplicate(cluster3: Cluster) -> None:
    urls = [f"http://{cluster3.hosts[i]}:5001" for i in (1, 2, 3)]
    tcp = [f"{cluster3.hosts[i]}:5100" for i in (1, 2, 3)]
    # Patient with elections after the kill; sends go through nodes 2 and 3 first.
    api = SyncHttpClient(urls[1:] + urls[:1], retries=30, backoff=Backoff(0.1, 1.0))
    for uid in ("bob", "carol"):
        api.user_token(uid, "t")
    api.channel_create("team", GROUP, ["alice", "bob", "carol"])

    def send(text: str) -> int:
        return api.send("alice", "team", GROUP, text.encode()).message_seq

    async def main() -> None:
        # bob knows node 1 only: he must wait for it and fetch what was sent meanwhile.
        # carol knows all three: she fails over. Both log in at node 1 first.
        async with (
            open_session(tcp[:1], uid="bob", token="t", http=urls, backoff=QUICK) as bob,
            open_session(tcp, uid="carol", token="t", http=urls, backoff=QUICK) as carol,
        ):
            seqs = [send("m1")]
            for s in (bob, carol):
                assert [m.payload for m in await receive_n(s, 1)] == [b"m1"]

            cluster3.nodes[1].kill()
            seqs += [send("m2"), send("m3")]
            # carol is back on another node and has m2 and m3 (caught up or live).
            got = await receive_n(carol, 2)
            assert [m.payload for m in got] == [b"m2", b"m3"]
            assert carol.connections == 2
            client = carol.client
            assert client is not None and client.node_id != 1
            assert not bob.connected

            await trio.to_thread.run_sync(cluster3.nodes[1].start)
            await bob.wait_connected(30.0)
            assert bob.connections == 2
            seqs.append(send("m4"))
            got = await receive_n(bob, 3)
            assert [m.payload for m in got] == [b"m2", b"m3", b"m4"]
            assert [m.message_seq for m in got] == seqs[1:] == [2, 3, 4]
            assert [m.payload for m in await receive_n(carol, 1)] == [b"m4"]
            await nothing_more(bob)
            await nothing_more(carol)

    trio.run(main)
    api.close()


def test_a_dropped_connection_catches_up_what_was_sent_meanwhile(node: NodeProcess) -> None:
    http, tcp = node.endpoints["http"], node.endpoints["tcp"]
    api = SyncHttpClient(http)
    api.user_token("bob", "t")

    async def main() -> None:
        # A slow first reconnect leaves room for sends while bob is away.
        async with open_session(tcp, uid="bob", token="t", http=http, backoff=Backoff(1, 1)) as s:
            api.send("alice", "bob", ChannelType.PERSON, b"before")
            assert (await s.receive()).payload == b"before"
            await s.drop_connection()
            away = [
                api.send("alice", "bob", ChannelType.PERSON, f"away{i}".encode()) for i in (1, 2)
            ]
            got = await receive_n(s, 2)
            assert [(m.payload, m.channel_id) for m in got] == [
                (b"away1", "alice"),
                (b"away2", "alice"),
            ]
            assert [m.message_id for m in got] == [a.message_id for a in away]
            # Our own reply is not delivered back to us.
            reply = await s.send("alice", ChannelType.PERSON, b"back")
            assert reply.message_seq == 4
            await nothing_more(s)

    trio.run(main)
    api.close()


def test_sync_facade_sends_receives_and_reports_refusals(node: NodeProcess) -> None:
    http, tcp = node.endpoints["http"], node.endpoints["tcp"]
    with SyncHttpClient(http) as api:
        api.user_token("alice", "ta")
        api.user_token("bob", "tb")
        with pytest.raises(ConnectRefused) as refused, connect_sync(tcp, uid="bob", token="x"):
            pass
        assert refused.value.reason_code == ReasonCode.AUTH_FAIL

        with (
            connect_sync(tcp, uid="alice", token="ta", http=http) as alice,
            connect_sync(tcp, uid="bob", token="tb", http=http) as bob,
        ):
            sent = alice.send("bob", ChannelType.PERSON, b"hi bob")
            m = bob.receive(timeout=10)
            assert (m.payload, m.from_uid, m.message_id) == (b"hi bob", "alice", sent.message_id)
            with pytest.raises(TimeoutError):
                bob.receive(timeout=0.2)

            # Withdrawing bob's token kicks him: the session stops instead of reconnecting.
            api.device_quit("bob")
            with pytest.raises(Disconnected) as kicked:
                bob.receive(timeout=10)
            assert kicked.value.reason_code == ReasonCode.CONNECT_KICK
            assert bob.connections == 1
