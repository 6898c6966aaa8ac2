"""The cluster's promises with real node processes on loopback: cross-node delivery, leader
failover under load, rolling restarts, and a Raft port that strangers cannot exploit."""

from __future__ import annotations

import base64
import os
import pickle
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from client.errors import ClientClosed, ConnectRefused
from client.wkproto import open_client
from launcher.devcluster import NodeProcess
from tests.conftest import Api, Cluster, eventually


def pick_channel(cluster: Cluster, leader: int | None = None, avoid: int | None = None) -> str:
    """A group id whose slot group is led by ``leader`` (or, with ``avoid``, by anyone else)."""
    for i in range(500):
        name = f"room{i}"
        owner = cluster.leader_of_key(name, via=1)
        if (leader is None or owner == leader) and owner != avoid:
            return name
    raise AssertionError("no channel with the wanted leader")


def sync_all(cluster: Cluster, via: int, channel: str, login: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    start = 1
    while True:
        page = cluster.api(via).ok(
            "/channel/messagesync",
            {
                "login_uid": login,
                "channel_id": channel,
                "channel_type": 2,
                "start_message_seq": start,
                "limit": 500,
                "pull_mode": 1,
            },
        )
        out.extend(page["messages"])
        if not page["more"]:
            return out
        start = out[-1]["message_seq"] + 1


def test_send_on_one_node_leader_on_another_receiver_on_a_third(cluster3: Cluster) -> None:
    leader = 2
    channel = pick_channel(cluster3, leader=leader)
    sender_node, receiver_node = 1, 3
    api = cluster3.api(sender_node)
    api.token("xavier", "tx")
    api.token("yvonne", "ty")
    cluster3.api(receiver_node).ok(
        "/channel", {"channel_id": channel, "channel_type": 2, "subscribers": ["xavier", "yvonne"]}
    )

    async def main() -> None:
        async with (
            open_client(*cluster3.tcp(sender_node), uid="xavier", token="tx") as x,
            open_client(*cluster3.tcp(receiver_node), uid="yvonne", token="ty") as y,
        ):
            ack = await x.send(channel, 2, b"across the cluster")
            assert ack.ok and ack.message_seq == 1
            got = await y.recv()
            assert (got.channel_id, got.payload, got.message_seq) == (
                channel,
                b"across the cluster",
                1,
            )
            assert got.message_id == ack.message_id
            # Person channels too: yvonne answers from node 3, xavier hears it on node 1.
            back = await y.send("xavier", 1, b"heard you")
            assert back.ok
            reply = await x.recv()
            assert (reply.channel_id, reply.from_uid, reply.payload) == (
                "yvonne",
                "yvonne",
                b"heard you",
            )

    trio.run(main)


class Sender(threading.Thread):
    """Sends over HTTP with unique client_msg_nos, retrying an unacknowledged one (same
    client_msg_no) on any node until it is acknowledged, and records every acknowledgement."""

    def __init__(self, cluster: Cluster, channel: str, nodes: list[int]) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.channel = channel
        self.nodes = nodes
        self.acked: dict[str, tuple[int, int]] = {}
        self.retries = 0
        self.stop = threading.Event()
        self.progress = threading.Condition()

    def run(self) -> None:
        clients = {n: httpx.Client(timeout=8.0) for n in self.nodes}
        i, turn = 0, 0
        while not self.stop.is_set():
            no = f"m{i}"
            body = {
                "from_uid": "writer",
                "channel_id": self.channel,
                "channel_type": 2,
                "client_msg_no": no,
                "payload": base64.b64encode(no.encode()).decode(),
            }
            node = self.nodes[turn % len(self.nodes)]
            turn += 1
            try:
                resp = clients[node].post(
                    f"http://{self.cluster.hosts[node]}:5001/message/send", json=body
                )
            except httpx.HTTPError:
                self.retries += 1
                continue
            if resp.status_code != 200:
                assert resp.status_code in (500, 503), resp.text
                self.retries += 1
                continue
            data = resp.json()
            with self.progress:
                self.acked[no] = (data["message_id"], data["message_seq"])
                self.progress.notify_all()
            i += 1
        for c in clients.values():
            c.close()

    def wait_for(self, count: int, timeout_s: float = 30.0) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: len(self.acked) >= count, timeout_s), (
                f"only {len(self.acked)} acknowledged"
            )


def check_log(cluster: Cluster, channel: str, acked: dict[str, tuple[int, int]]) -> None:
    """Every node answers the same contiguous log holding every acknowledged message once."""
    views = []
    for node_id, proc in cluster.nodes.items():
        if proc.running:
            views.append(sync_all(cluster, node_id, channel, "writer"))
    first = views[0]
    for other in views[1:]:
        assert [(m["message_seq"], m["message_id"]) for m in other] == [
            (m["message_seq"], m["message_id"]) for m in first
        ]
    seqs = [m["message_seq"] for m in first]
    assert seqs == list(range(1, len(seqs) + 1)), "seqs must be contiguous from 1"
    by_no: dict[str, list[int]] = {}
    for m in first:
        by_no.setdefault(m["client_msg_no"], []).append(m["message_seq"])
    assert all(len(v) == 1 for v in by_no.values()), "a client_msg_no was stored twice"
    for no, (_, seq) in acked.items():
        assert by_no.get(no) == [seq], f"acknowledged {no} at seq {seq} is missing"


def test_kill_9_of_a_busy_leader(tmp_path: Path) -> None:
    # The Sender writes to one group channel as fast as it is answered, faster than the
    # default per-channel rate limit: this test is about failover, not about that limit.
    cluster = Cluster(tmp_path, 3, messages__group_rate_limit=0)
    cluster.start()
    try:
        victim = 1
        channel = pick_channel(cluster, leader=victim)
        cluster.api(2).ok(
            "/channel", {"channel_id": channel, "channel_type": 2, "subscribers": ["writer"]}
        )
        sender = Sender(cluster, channel, nodes=[2, 3])
        sender.start()
        sender.wait_for(30)
        before = len(sender.acked)
        killed_at = time.monotonic()
        cluster.nodes[victim].kill()
        sender.wait_for(before + 30)
        resumed_s = time.monotonic() - killed_at
        sender.stop.set()
        sender.join(30)
        assert cluster.leader_of_key(channel, via=2) != victim
        check_log(cluster, channel, sender.acked)
        # The killed node comes back, catches up, and serves the same log.
        cluster.nodes[victim].start()
        eventually(
            lambda: all(
                g["raft_applied"] >= g["commit_index"]
                for g in cluster.status(victim)["groups"]
                if g["local"]
            ),
            what="restarted node caught up",
        )
        check_log(cluster, channel, sender.acked)
        print(f"writes resumed {resumed_s:.2f} s after the kill; retries {sender.retries}")
    finally:
        cluster.stop()


def test_rolling_restart_keeps_messages_and_online_delivery(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3)
    cluster.start()
    try:
        api = cluster.api(1)
        for uid in ("ann", "ben"):
            api.token(uid, f"t-{uid}")
        api.ok(
            "/channel", {"channel_id": "lobby", "channel_type": 2, "subscribers": ["ann", "ben"]}
        )
        acked: dict[str, tuple[int, int]] = {}

        async def round_trip(restarted: int, step: int) -> None:
            # ben listens on the node that just restarted; ann sends through another node.
            other = restarted % 3 + 1
            async with (
                open_client(*cluster.tcp(restarted), uid="ben", token="t-ben") as ben,
                open_client(*cluster.tcp(other), uid="ann", token="t-ann") as ann,
            ):
                for k in range(5):
                    no = f"s{step}-{k}"
                    res = await ann.send("lobby", 2, no.encode(), client_msg_no=no)
                    assert res.ok, res
                    acked[no] = (res.message_id, res.message_seq)
                    got = await ben.recv()
                    assert got.client_msg_no == no

        trio.run(round_trip, 1, 0)
        for step, node_id in enumerate((1, 2, 3), start=1):
            cluster.nodes[node_id].stop()
            cluster.nodes[node_id].start()
            trio.run(_connect_retrying, cluster, node_id)
            trio.run(round_trip, node_id, step)
        check_log(cluster, "lobby", {k: v for k, v in acked.items()})
    finally:
        cluster.stop()


async def _connect_retrying(cluster: Cluster, node_id: int) -> None:
    """A client reconnects after a restart: the node may still be electing for a moment."""
    deadline = trio.current_time() + 20
    while True:
        try:
            async with open_client(*cluster.tcp(node_id), uid="ben", token="t-ben") as c:
                await c.ping()
                return
        except (ConnectRefused, ClientClosed, OSError):
            if trio.current_time() > deadline:
                raise
            await trio.sleep(0.1)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (self.marker,))


def test_strangers_cannot_make_a_raft_port_unpickle(cluster3: Cluster, tmp_path: Path) -> None:
    marker = str(tmp_path / "pwned")
    payload = zlib.compress(pickle.dumps(_Evil(marker)), 3)
    frame = struct.pack("i", len(payload)) + payload
    host = cluster3.hosts[1]
    for port in (12001, 12002):  # two slot groups' Raft ports on node 1
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(frame * 3)
            s.settimeout(2)
            try:
                while s.recv(4096):
                    pass
            except (TimeoutError, ConnectionError):
                pass
    # The node kept serving, and (after its Raft loop has certainly read the frames) ran no
    # code from them.
    api = cluster3.api(1)
    api.token("after", "t")
    api.ok("/channel", {"channel_id": "still-fine", "channel_type": 2, "subscribers": ["after"]})
    assert not os.path.exists(marker)


def test_a_lone_node_without_a_password_still_refuses_pickles(
    node: NodeProcess, tmp_path: Path
) -> None:
    """No password configured: the node invents one, so its Raft ports refuse strangers too."""
    marker = str(tmp_path / "pwned-solo")
    payload = zlib.compress(pickle.dumps(_Evil(marker)), 3)
    host = node.endpoints["tcp"].rsplit(":", 1)[0]
    with socket.create_connection((host, 12001), timeout=5) as s:
        s.sendall(struct.pack("i", len(payload)) + payload)
        s.settimeout(2)
        try:
            while s.recv(4096):
                pass  # the node hangs up once it has read and refused the frame
        except (TimeoutError, ConnectionError):
            pass
    Api(node.endpoints["http"]).token("solo", "t")  # still serving, through that same group
    assert not os.path.exists(marker)


def test_multi_node_cluster_refuses_to_start_without_password(tmp_path: Path) -> None:
    from launcher.devcluster import NodeProcess, NodeStartError, node_env

    env = node_env(
        1,
        "127.0.91.1",
        tmp_path / "n1",
        {"RAFTCHAT_CLUSTER_NODES": "1@127.0.91.1,2@127.0.91.2", "RAFTCHAT_LOG_FORMAT": "text"},
    )
    proc = NodeProcess(1, tmp_path / "n1", env, tmp_path / "n1.log")
    with pytest.raises(NodeStartError, match=r"cluster\.password is required"):
        proc.start(timeout_s=20)
