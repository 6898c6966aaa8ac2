"""Strangers on the Raft ports and the peer gRPC port of a real three-node cluster.

The attackers connect from loopback addresses of their own (fresh ones, which no node has), so
what the nodes log about them can be told apart, and so that their per-address limits never
touch the nodes' own connections.
"""

from __future__ import annotations

import base64
import contextlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import trio

from cluster.bridge import AUTH_METADATA_KEY
from cluster.grpc_client import GrpcCallError, GrpcClient
from cluster.peerauth import PeerKeys, sign
from cluster.raft.guard import AUTH_DEADLINE_S, UNAUTHENTICATED_PER_SOURCE
from cluster.raft.wire import authenticator_for
from launcher.devcluster import SLOT_GROUPS
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.raftchat.peer.v1 import peer_pb2_grpc as pb_grpc
from tests.conftest import Cluster, eventually, fresh_hosts, start_node

RAFT_PORTS = range(12000, 12000 + SLOT_GROUPS + 1)  # the controller group and the slot groups
PASSWORD = "test-cluster-secret"  # what tests/conftest.py gives its clusters


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the module (a process's clusters share their addresses, so one at a
    time): each test attacks from addresses of its own, so their log lines stay apart."""
    c = Cluster(tmp_path_factory.mktemp("hostile"), 3)
    c.start()
    try:
        yield c
    finally:
        c.stop()


_STRANGERS = fresh_hosts(16)


def stranger(cluster: Cluster, n: int) -> str:
    """The ``n``-th attacker's loopback address, which no node has."""
    return _STRANGERS[n]


def connect(host: str, port: int, source: str) -> socket.socket:
    return socket.create_connection((host, port), timeout=5, source_address=(source, 0))


def closed_at(sock: socket.socket, limit_s: float) -> float | None:
    """When (``time.monotonic()``) the node closed this connection (EOF or reset), None if not
    within ``limit_s`` from now. A stranger is sent nothing; anything else is read and dropped."""
    end = time.monotonic() + limit_s
    while (left := end - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            if not sock.recv(4096):
                return time.monotonic()
        except ConnectionError:
            return time.monotonic()
    return None


def closed_within(sock: socket.socket, seconds: float) -> bool:
    return closed_at(sock, seconds) is not None


def log_lines(cluster: Cluster, node_id: int, *needles: str) -> list[str]:
    text = cluster.nodes[node_id].log_path.read_text()
    return [line for line in text.splitlines() if all(n in line for n in needles)]


def leaderships(cluster: Cluster) -> dict[tuple[int, int], tuple[Any, int]]:
    """Per node and group: the leader it knows and the Raft term (one more per election)."""
    out = {}
    for node_id in cluster.nodes:
        for g in cluster.status(node_id)["groups"]:
            out[node_id, g["group"]] = (g["leader"], g["term"])
    return out


def wait_balanced(cluster: Cluster) -> None:
    """Until every group has a leader and the controller has no leadership left to move (it
    moves one while two nodes' counts of slot-group leaderships differ by more than one)."""

    def balanced() -> bool:
        groups = cluster.status(1)["groups"]
        if any(g["leader"] is None for g in groups):
            return False
        counts = [sum(1 for g in groups[1:] if g["leader"] == n) for n in cluster.nodes]
        return max(counts) - min(counts) <= 1

    eventually(balanced, timeout_s=20, what="leaderships balanced")


def channel_led_by(cluster: Cluster, node_id: int) -> str:
    for i in range(500):
        name = f"hostile{i}"
        if cluster.leader_of_key(name, via=1) == node_id:
            cluster.api(1).ok(
                "/channel", {"channel_id": name, "channel_type": 2, "subscribers": ["w"]}
            )
            return name
    raise AssertionError(f"no channel led by node {node_id}")


class Sends(threading.Thread):
    """Sends through the HTTP API of ``nodes`` in turn, 20 per second, and records how long
    each took and which failed."""

    def __init__(self, cluster: Cluster, channel: str, nodes: list[int]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.channel, self.nodes = cluster, channel, nodes
        self.took: list[float] = []
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10.0) as http:
            i = 0
            while not self.stop.wait(0.05):
                node = self.nodes[i % len(self.nodes)]
                no = f"{self.channel}-{i}"
                body = {
                    "from_uid": "w",
                    "channel_id": self.channel,
                    "channel_type": 2,
                    "client_msg_no": no,
                    "payload": base64.b64encode(no.encode()).decode(),
                }
                start = time.monotonic()
                try:
                    resp = http.post(
                        f"http://{self.cluster.hosts[node]}:5001/message/send", json=body
                    )
                    if resp.status_code != 200:
                        self.failed.append(f"{node}: {resp.status_code} {resp.text}")
                except httpx.HTTPError as e:
                    self.failed.append(f"{node}: {e!r}")
                self.took.append(time.monotonic() - start)
                i += 1


class Streamer(threading.Thread):
    """Declares a 2 GiB frame on a Raft port and streams junk into it (64 KiB per 10 ms) until
    the node hangs up; then does it again on a new connection, until ``stop`` is set or
    ``seconds`` have passed."""

    def __init__(
        self, host: str, port: int, source: str, seconds: float, stop: threading.Event
    ) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.source, self.seconds = host, port, source, seconds
        self.stop = stop
        self.closed_after: list[float] = []  # seconds from connecting to the node's hang-up
        self.never_closed = 0
        self.streamed = 0

    def run(self) -> None:
        junk = os.urandom(64 * 1024)
        end = time.monotonic() + self.seconds

        def attacking() -> bool:
            return time.monotonic() < end and not self.stop.is_set()

        while attacking():
            with connect(self.host, self.port, self.source) as sock:
                opened = time.monotonic()
                try:
                    sock.sendall(struct.pack("i", 2**31 - 1))
                    while attacking():
                        sock.sendall(junk)
                        self.streamed += len(junk)
                        if select.select([sock], [], [], 0.01)[0] and not sock.recv(1):
                            raise ConnectionResetError  # EOF: the node closed it
                    if time.monotonic() - opened > 1.0:  # held open when the attack ended
                        self.never_closed += 1
                except TimeoutError:  # the node stopped reading but kept the connection
                    self.never_closed += 1
                except OSError:  # reset or broken pipe: the node closed it
                    self.closed_after.append(time.monotonic() - opened)
            time.sleep(0.2)  # the attack's pace, not a wait for anything


def test_a_stranger_streaming_a_2_gib_frame_is_cut_off_and_the_cluster_carries_on(
    cluster: Cluster,
) -> None:
    wait_balanced(cluster)
    victim = 1
    channel = channel_led_by(cluster, victim)
    before = leaderships(cluster)
    sends = Sends(cluster, channel, nodes=[victim, 2])
    # The attack lasts until 20 sends went through the node under attack and another (at
    # least 3 s): on a busy machine each send takes longer, so a fixed time proves less.
    enough = threading.Event()
    attackers = [
        Streamer(cluster.hosts[victim], port, stranger(cluster, 0), seconds=30.0, stop=enough)
        for port in RAFT_PORTS
    ]
    sends.start()
    started = time.monotonic()
    for a in attackers:
        a.start()
    eventually(
        lambda: len(sends.took) >= 20 and time.monotonic() - started >= 3.0,
        timeout_s=30,
        what="20 sends during the attack",
    )
    enough.set()
    for a in attackers:
        a.join(20)
    sends.stop.set()
    sends.join(20)
    # every such connection was closed right away, and the attack went on all along
    assert all(a.never_closed == 0 for a in attackers), [a.never_closed for a in attackers]
    closed_after = [s for a in attackers for s in a.closed_after]
    assert len(closed_after) >= 5 * len(attackers)
    assert max(closed_after) < 1.0, sorted(closed_after)[-5:]
    # meanwhile the node's groups went on as before: every send succeeded, quickly, and no
    # group held an election
    assert sends.failed == []
    assert len(sends.took) >= 20 and max(sends.took) < 1.0, sorted(sends.took)[-5:]
    assert leaderships(cluster) == before
    lines = log_lines(cluster, victim, "raft.guard", stranger(cluster, 0))
    assert lines and "declares 2147483647 bytes, at most 1024 are taken" in lines[0]
    assert len(lines) <= 2  # one per address and 10 s (a count line if the interval closed)


def test_bad_frames_end_their_connection_with_one_line_per_source(cluster: Cluster) -> None:
    host = cluster.hosts[2]
    # a well-formed frame signed with another password
    forged = authenticator_for("not-the-password").encrypt_at_time(b"\x80\x02N.", 1)
    with connect(host, 12001, stranger(cluster, 1)) as sock:
        sock.sendall(struct.pack("i", len(forged)) + forged)
        assert closed_within(sock, 1.0)
    lines = log_lines(cluster, 2, "raft.guard", stranger(cluster, 1))
    assert len(lines) == 1 and "frame failed authentication (bad frame tag)" in lines[0], lines
    # many junk connections from one address: each closed, one line between them
    source = stranger(cluster, 2)
    for i in range(60):
        with connect(host, RAFT_PORTS[i % len(RAFT_PORTS)], source) as sock:
            sock.sendall(struct.pack("i", 100) + os.urandom(100))
            assert closed_within(sock, 1.0)
    # a line is written before its connection is closed: all of them are in the file now
    lines = log_lines(cluster, 2, "raft.guard", source)
    assert len(lines) == 1, lines
    # the node serves on
    cluster.api(2).ok(
        "/channel", {"channel_id": "after-junk", "channel_type": 2, "subscribers": ["w"]}
    )


def test_a_source_gets_a_few_unauthenticated_connections_for_a_short_while(
    cluster: Cluster,
) -> None:
    host, source = cluster.hosts[3], stranger(cluster, 3)
    opened = time.monotonic()
    held = [connect(host, 12002, source) for _ in range(UNAUTHENTICATED_PER_SOURCE)]
    try:
        with connect(host, 12002, source) as extra:
            assert closed_within(extra, 0.5)  # no place left for it
        # the held ones, silent, are closed once their deadline has passed
        ages = [(closed_at(s, AUTH_DEADLINE_S + 2.0) or 1e9) - opened for s in held]
        assert all(AUTH_DEADLINE_S - 0.5 < a < AUTH_DEADLINE_S + 1.0 for a in ages), ages
    finally:
        for s in held:
            s.close()
    assert log_lines(cluster, 3, "raft.guard", source, "waiting to authenticate")


ONLINE = "/raftchat.peer.v1.Peer/Online"


def signed(
    keys: PeerKeys, path: str, body: bytes, to: str, **kw: Any
) -> tuple[tuple[str, str], ...]:
    """The metadata of a call of ``path`` with ``body`` to host ``to``, as a peer signs it."""
    return ((AUTH_METADATA_KEY, sign(keys, path, body, to=to, **kw)),)


def raw_call(address: str, path: str, body: bytes, metadata: Any) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(path)(body, metadata=metadata, timeout=5)
        except grpc.RpcError as e:
            return e.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def test_peer_grpc_refuses_a_wrong_credential_and_logs_it_once(cluster: Cluster) -> None:
    host = cluster.hosts[1]
    body = pb.OnlineRequest(uids=["u"]).SerializeToString()
    wrong = PeerKeys.of("wrong")
    with grpc.insecure_channel(f"{host}:11110") as channel:
        online = channel.unary_unary(ONLINE)
        # Another password; the static token of earlier versions; nothing.
        for metadata in [signed(wrong, ONLINE, body, host)] * 20 + [
            ((AUTH_METADATA_KEY, "5" * 64),),
            (),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                online(body, metadata=metadata, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        # only those calls ended: the same connection serves a call signed with the password
        online(body, metadata=signed(PeerKeys.of(PASSWORD), ONLINE, body, host), timeout=5)
    lines = log_lines(cluster, 1, "peer gRPC: refused Online from")
    assert len(lines) == 1, lines
    assert "wrong peer credential" in lines[0]


class Tap:
    """A man in the middle between a member and a node: records each call's path, bytes and
    peer credential and passes it on unchanged, and the reply with its MAC back."""

    def __init__(self, target: str, host: str = "127.0.0.1", port: int = 0) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.captured: list[tuple[str, bytes, Any]] = []
        self._upstream = grpc.insecure_channel(target)
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((self,))
        self.address = f"{host}:{self.server.add_insecure_port(f'{host}:{port}')}"
        self.server.start()

    def service(self, details: Any) -> grpc.RpcMethodHandler:
        def relay(body: bytes, context: grpc.ServicerContext) -> bytes:
            md = tuple((k, v) for k, v in details.invocation_metadata if k == AUTH_METADATA_KEY)
            self.captured.append((details.method, body, md))
            try:
                call = self._upstream.unary_unary(details.method)
                timeout = context.time_remaining() or 5.0  # the caller's deadline
                reply, done = call.with_call(body, metadata=md, timeout=timeout)
                context.set_trailing_metadata(done.trailing_metadata() or ())  # the reply's MAC
                return reply  # type: ignore[no-any-return]
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())  # type: ignore[attr-defined]
                raise

        return grpc.unary_unary_rpc_method_handler(relay)

    def close(self) -> None:
        self.server.stop(0)
        self._upstream.close()


def test_a_captured_peer_call_replayed_is_refused(cluster: Cluster) -> None:
    """A member's call recorded on the wire (here the test signs as a member would, through a
    tap) and sent again: refused as a replay while fresh, refused with its body changed, and
    refused once its time has left the window."""
    target = f"{cluster.hosts[2]}:11110"
    keys = PeerKeys.of(PASSWORD)
    tap = Tap(target)

    async def genuine() -> None:
        client = GrpcClient(tap.address, pb_grpc.PeerStub, keys)
        try:
            await client.call("Online", pb.OnlineRequest(uids=["alice"]), 5.0)
        finally:
            client.close()

    try:
        trio.run(genuine)
    finally:
        tap.close()
    [(path, body, metadata)] = [c for c in tap.captured if c[0] == ONLINE]
    assert raw_call(target, path, body, metadata) == grpc.StatusCode.UNAUTHENTICATED
    altered = pb.OnlineRequest(uids=["mallory"]).SerializeToString()
    assert raw_call(target, path, altered, metadata) == grpc.StatusCode.UNAUTHENTICATED
    # The same call as captured after the window: its time is 31 s old (signed so here rather
    # than waiting half a minute).
    stale = signed(keys, path, body, cluster.hosts[2], now=time.time() - 31)
    assert raw_call(target, path, body, stale) == grpc.StatusCode.UNAUTHENTICATED
    # A fresh call of a member passes, and the node logged the replay.
    assert (
        raw_call(target, path, body, signed(keys, path, body, cluster.hosts[2]))
        == grpc.StatusCode.OK
    )
    lines = log_lines(cluster, 2, "peer gRPC: refused Online from")
    assert lines and "replayed call (nonce already seen)" in lines[0], lines
    with pytest.raises(GrpcCallError):  # nothing reaches a node unsigned through the bridge
        trio.run(_unsigned_call, target)


async def _unsigned_call(target: str) -> None:
    client = GrpcClient(target, pb_grpc.PeerStub, None)
    try:
        await client.call("Online", pb.OnlineRequest(uids=["alice"]), 5.0)
    finally:
        client.close()


def test_members_elect_and_commit_while_a_stranger_holds_its_places(cluster: Cluster) -> None:
    """Last in this module: it kills and restarts a node of the module's cluster."""
    holder = Holder(cluster, stranger(cluster, 4))
    try:
        wait_balanced(cluster)
        holder.start()
        assert holder.holding.wait(10), "the stranger never held all its places"
        # all its places are taken: one more connection is closed at once (a few tries: the
        # stranger may just be taking back a place that a deadline freed)
        refused = 0
        for _ in range(3):
            with connect(cluster.hosts[2], 12003, holder.source) as extra:
                refused += closed_within(extra, 0.5)
        assert refused >= 2
        # a leader dies: the other two elect new leaders (reconnecting to each other) ...
        channel = channel_led_by(cluster, 1)
        cluster.nodes[1].kill()
        for i in range(5):
            send_ok(cluster, 2, channel, f"after-kill-{i}")
        # ... and it comes back, reconnects to both and catches up
        cluster.nodes[1].start()
        eventually(
            lambda: all(
                g["leader"] is not None and g["raft_applied"] >= g["commit_index"] > 0
                for g in cluster.status(1)["groups"]
            ),
            timeout_s=20,
            what="the restarted node caught up",
        )
        send_ok(cluster, 1, channel, "after-restart")
        assert holder.reopened > 0  # the stranger kept its places all along
    finally:
        holder.stop.set()
        holder.join(10)


def send_ok(cluster: Cluster, node_id: int, channel: str, no: str) -> None:
    body = {
        "from_uid": "w",
        "channel_id": channel,
        "channel_type": 2,
        "client_msg_no": no,
        "payload": base64.b64encode(no.encode()).decode(),
    }
    resp = httpx.post(f"http://{cluster.hosts[node_id]}:5001/message/send", json=body, timeout=15)
    assert resp.status_code == 200, resp.text


class Holder(threading.Thread):
    """Keeps ``UNAUTHENTICATED_PER_SOURCE`` silent connections open from ``source`` to every
    Raft port of every node, opening a new one whenever a node closes one."""

    def __init__(self, cluster: Cluster, source: str) -> None:
        super().__init__(daemon=True)
        self.source = source
        self.targets = [(h, p) for h in cluster.hosts.values() for p in RAFT_PORTS]
        self.stop = threading.Event()
        self.holding = threading.Event()
        self.reopened = 0

    def run(self) -> None:
        socks: dict[tuple[str, int, int], socket.socket | None] = {
            (h, p, k): None for h, p in self.targets for k in range(UNAUTHENTICATED_PER_SOURCE)
        }
        while not self.stop.is_set():
            for slot, sock in socks.items():
                if sock is not None and select.select([sock], [], [], 0)[0]:
                    sock.close()  # the node closed it (its deadline): take the place again
                    sock = socks[slot] = None
                    self.reopened += 1
                if sock is None:
                    with contextlib.suppress(OSError):  # the node is down
                        socks[slot] = connect(slot[0], slot[1], self.source)
            if all(s is not None for s in socks.values()):
                self.holding.set()
            self.stop.wait(0.1)  # the attack's pace
        for sock in socks.values():
            if sock is not None:
                sock.close()


def test_a_lone_node_without_a_password_serves_its_peer_service_to_nobody(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Without cluster.password, the node's Raft ports use a random password; its peer gRPC
    # service must be just as closed (it accepted any caller, who could commit anything).
    node = start_node(tmp_path_factory.mktemp("lone"))
    try:
        host = node.endpoints["peer"]
        item = pb.SendItem(from_uid="x", channel_id="", channel_type=1, client_msg_no="m")
        with grpc.insecure_channel(host) as channel:
            stub = pb_grpc.PeerStub(channel)
            request = pb.ForwardSendsRequest(group=1, items=[item])
            path = "/raftchat.peer.v1.Peer/ForwardSends"
            guess = signed(
                PeerKeys.of("guess"), path, request.SerializeToString(), host.rsplit(":", 1)[0]
            )
            for metadata in (None, guess):
                with pytest.raises(grpc.RpcError) as info:
                    stub.ForwardSends(request, timeout=5, metadata=metadata)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert node.running
    finally:
        node.stop()
