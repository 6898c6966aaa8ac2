"""``raftchat chat`` and ``raftchat tail`` as subprocesses against a real node."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import trio

from client.http import SyncHttpClient
from client.wkproto import open_client
from node.devcluster import NodeProcess
from proto.wkproto import ChannelType


class Lines:
    """A pipe's lines, read on a thread so that the test can wait for one with a timeout."""

    def __init__(self, pipe: IO[str]) -> None:
        self._q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._q.put(line.rstrip("\n"))

    def next(self, timeout_s: float = 20.0) -> str:
        try:
            return self._q.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout_s} s") from None


@contextmanager
def raftchat(*args: str) -> Iterator[tuple[subprocess.Popen[str], Lines, Lines]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        yield proc, Lines(proc.stdout), Lines(proc.stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_chat_sends_stdin_lines_and_prints_incoming_messages(node: NodeProcess) -> None:
    http, tcp = node.endpoints["http"], node.endpoints["tcp"]
    host, port = tcp.rsplit(":", 1)
    api = SyncHttpClient(http)
    api.user_token("bob", "tb")

    with raftchat("chat", "--uid", "alice", "--to", "bob", "--node", tcp, "--http", http) as (
        proc,
        out,
        err,
    ):
        assert err.next().startswith("# alice connected")

        async def bob_side() -> None:
            async with open_client(host, int(port), uid="bob", token="tb") as bob:
                assert proc.stdin is not None
                proc.stdin.write("hello bob\n\nsecond line\n")
                proc.stdin.flush()
                got = [await bob.recv(timeout_s=20) for _ in range(2)]
                assert [(m.from_uid, m.payload) for m in got] == [
                    ("alice", b"hello bob"),
                    ("alice", b"second line"),
                ]
                reply = await bob.send("alice", ChannelType.PERSON, b"hi alice")
                assert reply.ok and reply.message_seq == 3

        trio.run(bob_side)
        assert out.next() == "[3] bob: hi alice"
        # A message from another channel says where it comes from.
        api.send("carol", "alice", ChannelType.PERSON, b"psst")
        assert out.next() == "(carol/1) [1] carol: psst"

        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
    api.close()


def test_tail_prints_the_log_then_new_messages(node: NodeProcess) -> None:
    http = node.endpoints["http"]
    api = SyncHttpClient(http)
    api.channel_create("team", ChannelType.GROUP, ["alice"])
    for text in ("one", "two", "three"):
        api.send("alice", "team", ChannelType.GROUP, text.encode())

    base = ["tail", "--channel", "team", "--http", http]
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", *base, "--from-seq", "2", "--once"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[2] alice: two", "[3] alice: three"]

    with raftchat(*base, "--interval", "0.05") as (_proc, out, _err):
        assert [out.next() for _ in range(3)] == [
            "[1] alice: one",
            "[2] alice: two",
            "[3] alice: three",
        ]
        api.send("", "team", ChannelType.GROUP, b"from the system")
        assert out.next() == "[4] system: from the system"
    api.close()


def test_cluster_command_prints_status_and_reports_refusals(node: NodeProcess) -> None:
    http = node.endpoints["http"]

    def cluster(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "node.cli", "cluster", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    # The first --api does not answer: the command goes on to the next one.
    status = cluster("status", "--api", "http://127.0.0.2:5001", "--api", http)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("cluster map version ") and lines[0].endswith("seen from node 1")
    assert f"  node 1: {http.split('//')[1].split(':')[0]}" in lines
    assert any(line.split()[:3] == ["ctrl", "1", "1"] for line in lines)

    refused = cluster("leave", "--node", "9", "--api", http)
    assert refused.returncode == 1
    assert refused.stderr.startswith("raftchat cluster: 404 ")
