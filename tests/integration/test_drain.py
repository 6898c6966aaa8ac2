"""Drain on a real three-node cluster: a rolling restart under load, each node drained in turn
(by SIGTERM, and by ``raftchat cluster drain``), loses no acknowledged message, and every
client's SEND is acknowledged in the end. The clients are WKProto sessions that reconnect
through ``/route`` and send an unacknowledged message again with its ``client_msg_no``."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from client.errors import ClientClosed
from client.session import ConnectionState, Session, open_session
from client.wkproto import WKClient, open_client
from launcher.devcluster import NodeProcess
from proto.wkproto import ReasonCode
from tests.conftest import ADMIN_TOKEN, Api, Cluster, eventually, start_node
from tests.integration.test_cluster import check_log
from tests.jsonrpc_client import open_jsonrpc

CHANNEL = "drainroom"
WRITERS = [f"w{i}" for i in range(6)]
ROUTED = [f"u{i}" for i in range(300)]
"""Enough uids that every node is somebody's route."""
SEND_TIMEOUT_S = 60.0
"""A send may wait out a node's drain and a reconnection; failing it fails the test."""


def caught_up(cluster: Cluster, node_id: int) -> bool:
    groups = [g for g in cluster.status(node_id)["groups"] if g["local"]]
    return all(g["leader"] is not None for g in groups) and all(
        g["raft_applied"] >= g["commit_index"] for g in groups
    )


def drain_log_line(cluster: Cluster, node_id: int) -> str:
    return drain_log_line_of(cluster.nodes[node_id])


def test_rolling_restart_with_drain_under_load(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, messages__group_rate_limit=0)
    cluster.start()
    try:
        api = cluster.api(1)
        for uid in WRITERS:
            api.token(uid, f"t-{uid}")
        api.token("writer", "t-writer")  # check_log reads the channel as "writer"
        api.ok(
            "/channel",
            {"channel_id": CHANNEL, "channel_type": 2, "subscribers": [*WRITERS, "writer"]},
        )
        urls = [f"http://{h}:5001" for h in cluster.hosts.values()]
        acked: dict[str, tuple[int, int]] = {}
        connected_to: dict[str, list[str]] = {uid: [] for uid in WRITERS}
        states: dict[str, list[str]] = {uid: [] for uid in WRITERS}

        async def writer(session: Session) -> None:
            i = 0
            while True:
                no = f"{session.uid}-{i}"
                # Raises (and fails the test) unless acknowledged, across reconnections.
                res = await session.send(
                    CHANNEL, 2, no.encode(), client_msg_no=no, timeout_s=SEND_TIMEOUT_S
                )
                acked[no] = (res.message_id, res.message_seq)
                counts[session.uid] += 1
                changed[0].set()
                changed[0] = trio.Event()
                i += 1

        def recorder(uid: str) -> Callable[[ConnectionState], None]:
            def on_state(state: ConnectionState) -> None:
                where = f"{state.address[0]}:{state.address[1]}"
                states[uid].append(f"{trio.current_time():.2f} {state.phase} {where}")
                if state.phase == "connected":
                    connected_to[uid].append(where)

            return on_state

        counts = dict.fromkeys(WRITERS, 0)
        changed = [trio.Event()]

        async def acks(count: int) -> None:
            """Until every writer has had ``count`` more sends acknowledged from now."""
            target = {uid: n + count for uid, n in counts.items()}
            with trio.fail_after(SEND_TIMEOUT_S):
                while any(counts[uid] < target[uid] for uid in WRITERS):
                    await changed[0].wait()

        def drain_by_cli(node_id: int) -> None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "node.cli",
                    "cluster",
                    "drain",
                    "--node",
                    str(node_id),
                    "--api",
                    urls[node_id % 3],  # through another node
                    "--admin-token",
                    ADMIN_TOKEN,
                ],
                check=True,
                timeout=30,
            )
            proc = cluster.nodes[node_id].proc
            assert proc is not None
            assert proc.wait(timeout=30) == 0  # a drained node stops, and says it went well

        def not_handed_out(node_id: int) -> None:
            """Right after a drain: the other nodes no longer hand the node out. (A node that
            stopped without a word would be, for up to client_routes.LIVE_S.)"""
            gone = f"{cluster.hosts[node_id]}:5100"
            for via in cluster.nodes:
                if via != node_id:
                    resp = cluster.api(via).http.post("/route/batch", json=ROUTED)
                    assert resp.status_code == 200, resp.text
                    assert gone not in {g["tcp_addr"] for g in resp.json()}, (via, resp.json())

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                for uid in WRITERS:
                    session = await nursery.start(
                        _session, uid, urls, recorder(uid), name=f"session {uid}"
                    )
                    nursery.start_soon(writer, session)
                await acks(10)
                for node_id in (1, 2, 3):
                    if node_id == 2:
                        await trio.to_thread.run_sync(drain_by_cli, node_id)
                    else:
                        await trio.to_thread.run_sync(cluster.nodes[node_id].stop)
                    await trio.to_thread.run_sync(not_handed_out, node_id)
                    await acks(5)  # every writer goes on while it is down
                    await trio.to_thread.run_sync(cluster.nodes[node_id].start)
                    await trio.to_thread.run_sync(
                        lambda n=node_id: eventually(
                            lambda: caught_up(cluster, n), 30, f"node {n} caught up"
                        )
                    )
                    await acks(5)
                nursery.cancel_scope.cancel()

        try:
            trio.run(main)
        finally:
            for uid, seen in states.items():
                print(uid, seen)
        for node_id in (1, 2, 3):
            line = drain_log_line(cluster, node_id)
            assert "drained" in line and "sessions_left=0" in line, line
        # Every writer was moved off a draining node at least once, to the node /route named.
        assert all(len(v) >= 2 for v in connected_to.values()), connected_to
        check_log(cluster, CHANNEL, acked)
        print(f"acknowledged {len(acked)} sends; connections per writer: ", end="")
        print({uid: len(v) for uid, v in connected_to.items()})
    finally:
        cluster.stop()


async def _session(
    uid: str,
    urls: list[str],
    on_state: Callable[[ConnectionState], None],
    *,
    task_status: trio.TaskStatus[Session] = trio.TASK_STATUS_IGNORED,
) -> None:
    nodes = [f"{u.removeprefix('http://').removesuffix(':5001')}:5100" for u in urls]
    async with open_session(
        nodes,
        uid=uid,
        token=f"t-{uid}",
        http=urls,
        route=True,
        on_state=on_state,
    ) as session:
        task_status.started(session)
        await trio.sleep_forever()


def test_sigterm_drains_a_lone_node_wkproto_and_jsonrpc_sessions(tmp_path: Path) -> None:
    """SIGTERM: both sessions get DISCONNECT 18 (JSON-RPC: its ``disconnect`` notification),
    the gateway refuses new connections while HTTP still answers that the node drains, every
    SEND answered was a success, and each is stored; then the node exits with 0."""
    node = start_node(tmp_path, auth__admin_token=ADMIN_TOKEN)
    try:
        _drain_lone_node(node)
    finally:
        node.stop()


def _drain_lone_node(node: NodeProcess) -> None:
    api = Api.of(node)
    for uid in ("ann", "bob"):
        api.token(uid, f"t-{uid}", device_flag=0 if uid == "ann" else 1)
    host = node.endpoints["tcp"].rsplit(":", 1)[0]
    # Bad requests change nothing (the node serves on below).
    assert api.post("/cluster/drain", {"node_id": 9}).status_code == 404
    assert api.post("/cluster/drain", {"node_id": "1"}).status_code == 400
    assert api.post("/cluster/drain", {}).status_code == 400
    acked: dict[str, int] = {}
    unanswered: list[str] = []

    async def send_one(ann: WKClient, no: str) -> None:
        try:
            res = await ann.send("bob", 1, no.encode(), client_msg_no=no, timeout_s=30)
        except ClientClosed:
            unanswered.append(no)  # cut off by the drain: a client sends it again elsewhere
            return
        assert res.ok, res  # never a failure answer
        acked[no] = res.message_seq

    async def main() -> None:
        async with (
            open_client(host, 5100, uid="ann", token="t-ann") as ann,
            open_jsonrpc(host, 5200, uid="bob", token="t-bob") as bob,
            trio.open_nursery() as nursery,
        ):
            for i in range(200):
                nursery.start_soon(send_one, ann, f"d{i}")
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
            note = await bob.notification("disconnect", timeout_s=10)
            assert note["reasonCode"] == ReasonCode.NODE_NOT_MATCH, note
            # bob has not hung up: the node holds its socket for gateway.kick_close_delay_s,
            # and meanwhile refuses new clients and says over HTTP that it drains.
            with pytest.raises(OSError):
                await trio.open_tcp_stream(host, 5100)
            health = await trio.to_thread.run_sync(api.http.get, "/health")
            assert health.status_code == 503 and health.json()["status"] == "draining"
            ready = await trio.to_thread.run_sync(api.http.get, "/readyz")
            assert ready.status_code == 503 and "draining" in ready.json()["reasons"][0]
            route = await trio.to_thread.run_sync(api.http.get, "/route?uid=carol")
            assert route.status_code == 503, route.text
        assert ann.disconnect is not None
        assert ann.disconnect.reason_code == ReasonCode.NODE_NOT_MATCH

    trio.run(main)
    assert node.proc is not None
    assert node.proc.wait(timeout=15) == 0
    assert len(acked) + len(unanswered) == 200
    node.start()
    api = Api.of(node)
    stored = api.ok(
        "/channel/messagesync",
        {
            "login_uid": "ann",
            "channel_id": "bob",
            "channel_type": 1,
            "start_message_seq": 1,
            "limit": 1000,
            "pull_mode": 1,
        },
    )["messages"]
    by_no = {m["client_msg_no"]: m["message_seq"] for m in stored}
    assert all(by_no.get(no) == seq for no, seq in acked.items()), "an acknowledged send is lost"
    assert "drained" in drain_log_line_of(node)


def drain_log_line_of(node: NodeProcess) -> str:
    lines = node.log_path.read_text().splitlines()
    found = [line for line in lines if "drained" in line or "drain cut short" in line]
    assert found, "the node logged no end of drain"
    return found[-1]
