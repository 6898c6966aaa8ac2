"""``raftchat chat`` and ``raftchat tail`` as subprocesses against a real node.

One node serves the module's tests, another the ones that need tokens: each test has users and
channels of its own."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import pytest
import trio

from client.http import SyncHttpClient
from client.wkproto import open_client
from launcher.devcluster import NodeProcess
from proto.wkproto import ChannelType
from tests.conftest import eventually, running_node, start_node


class Lines:
    """A pipe's lines, read on a thread so that the test can wait for one with a timeout."""

    def __init__(self, pipe: IO[str]) -> None:
        self._q: queue.Queue[str] = queue.Queue()
        self._ended = threading.Event()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._q.put(line.rstrip("\n"))
        self._ended.set()

    def rest(self, timeout_s: float = 20.0) -> list[str]:
        """Every line up to the pipe's end."""
        self._ended.wait(timeout_s)
        lines = []
        while not self._q.empty():
            lines.append(self._q.get_nowait())
        return lines

    def until(self, prefix: str) -> list[str]:
        """The lines up to the first that starts with ``prefix``, that one included."""
        lines = [self.next()]
        while not lines[-1].startswith(prefix):
            lines.append(self.next())
        return lines

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


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    yield from running_node(tmp_path_factory.mktemp("cli"))


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
        assert err.next() == f"# connecting to {tcp}"
        assert err.next() == f"# connected to node 1 ({tcp})"
        assert err.next().startswith("# alice chatting with bob")

        async def bob_side() -> None:
            async with open_client(host, int(port), uid="bob", token="tb") as bob:
                assert proc.stdin is not None
                proc.stdin.write("hello bob\n\nsecond line\n")
                proc.stdin.flush()
                got = [await bob.recv(timeout_s=20) for _ in range(2)]
                # Lines travel as WuKongIM text messages.
                assert [(m.from_uid, m.payload) for m in got] == [
                    ("alice", b'{"type":1,"content":"hello bob"}'),
                    ("alice", b'{"type":1,"content":"second line"}'),
                ]
                reply = await bob.send(
                    "alice", ChannelType.PERSON, b'{"type":1,"content":"hi alice"}'
                )
                assert reply.ok and reply.message_seq == 3
                image = b'{"type":2,"url":"https://x/cat.png","width":640,"height":480}'
                assert (await bob.send("alice", ChannelType.PERSON, image)).ok

        trio.run(bob_side)
        assert out.next() == "[3] bob: hi alice"
        assert out.next() == "[4] bob: [image 640x480] https://x/cat.png"
        # A message from another channel says where it comes from; a payload outside the
        # conventions is shown as text, with its control characters escaped.
        api.send("carol", "alice", ChannelType.PERSON, b"psst \x1b[2J")
        assert out.next() == "(carol/1) [1] carol: psst \\x1b[2J"

        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
        assert err.next() == "# bye"
    api.close()


def test_ctrl_c_and_sigterm_end_chat_with_one_line(node: NodeProcess) -> None:
    http, tcp = node.endpoints["http"], node.endpoints["tcp"]
    for sig, code, bye in (
        (signal.SIGINT, 130, "# bye (interrupted)"),
        (signal.SIGTERM, 0, "# bye (terminated)"),
    ):
        with raftchat("chat", "--uid", "cleo", "--to", "dan", "--node", tcp, "--http", http) as (
            proc,
            _out,
            err,
        ):
            err.until("# cleo chatting with dan")
            proc.send_signal(sig)
            assert proc.wait(timeout=20) == code
            assert proc.stderr is not None
            assert err.next() == bye
            assert err.rest() == []


def test_tail_prints_the_log_then_new_messages(node: NodeProcess) -> None:
    http = node.endpoints["http"]
    api = SyncHttpClient(http)
    api.channel_create("tailroom", ChannelType.GROUP, ["tia"])
    for text in ("one", "two", "three"):
        api.send("tia", "tailroom", ChannelType.GROUP, text.encode())

    base = ["tail", "--channel", "tailroom", "--http", http]
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", *base, "--from-seq", "2", "--once"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[2] tia: two", "[3] tia: three"]

    with raftchat(*base, "--interval", "0.05") as (_proc, out, _err):
        assert [out.next() for _ in range(3)] == [
            "[1] tia: one",
            "[2] tia: two",
            "[3] tia: three",
        ]
        api.send("", "tailroom", ChannelType.GROUP, b"from the system")
        assert out.next() == "[4] system: from the system"
    api.close()


API_TOKEN, ADMIN_TOKEN = "cli-api-token", "cli-admin-token"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with both tokens, as a deployment runs."""
    proc = start_node(
        tmp_path_factory.mktemp("secured"),
        auth__api_token=API_TOKEN,
        auth__admin_token=ADMIN_TOKEN,
    )
    try:
        yield proc
    finally:
        proc.stop()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``raftchat <args>`` to its end; ``env``: variables on top of a clean environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAFTCHAT_")}
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
    )


def test_cluster_command_prints_status_and_reports_refusals(secured: NodeProcess) -> None:
    http = secured.endpoints["http"]
    admin = {"RAFTCHAT_AUTH_ADMIN_TOKEN": ADMIN_TOKEN}  # the node's own variable
    # The first --api does not answer: the command goes on to the next one.
    status = run_cli(
        "cluster", "status", "--api", "http://127.0.0.2:5001", "--api", http, env=admin
    )
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("cluster map version ") and lines[0].endswith("seen from node 1")
    host = http.split("//")[1].split(":")[0]
    assert any(line.split() == ["1", host, "ok"] for line in lines), lines
    assert any(line.split()[:3] == ["ctrl", "1", "1"] for line in lines)

    refused = run_cli("cluster", "leave", "--node", "9", "--api", http, env=admin)
    assert refused.returncode == 1
    assert refused.stderr.startswith("raftchat cluster: 404 ")
    # Without the admin token, or with the API token, nothing reaches the cluster.
    for extra in ([], ["--admin-token", API_TOKEN]):
        refused = run_cli("cluster", "leave", "--node", "1", "--api", http, *extra)
        assert refused.returncode == 1
        assert refused.stderr.startswith("raftchat cluster: 401 "), refused.stderr
    done = run_cli("cluster", "status", "--api", http, "--admin-token", ADMIN_TOKEN, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["node_id"] == 1


def test_tail_sends_the_api_token(secured: NodeProcess) -> None:
    http = secured.endpoints["http"]
    api = SyncHttpClient(http, api_token=API_TOKEN)
    api.channel_create("team", ChannelType.GROUP, ["alice"])
    api.send("alice", "team", ChannelType.GROUP, b"one")
    api.close()
    base = ["tail", "--channel", "team", "--http", http, "--once"]
    for args, env in (
        (["--api-token", API_TOKEN], {}),
        ([], {"RAFTCHAT_AUTH_API_TOKEN": API_TOKEN}),
    ):
        done = run_cli(*base, *args, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["[1] alice: one"]
    refused = run_cli(*base)
    assert refused.returncode == 1 and "401" in refused.stderr


class CuttingProxy:
    """A TCP relay to a node's WKProto port that cuts connections, as a network failure would.

    ``cut_now()`` closes every connection and closes new ones at once until ``heal()``.
    ``lose_next_answer()`` cuts the same way but later: the client's next bytes still reach
    the server, and the cut happens when the server answers, so the answer is lost."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.cut = threading.Event()
        self._armed = False
        self._down = False
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(listen)
        self.address = f"{listen[0]}:{listen[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_next_answer(self) -> None:
        with self._lock:
            self._armed = True

    def cut_now(self) -> None:
        with self._lock:
            self._down = True
            live, self._live = self._live, set()
        _close(*live)

    def heal(self) -> None:
        with self._lock:
            self._down = False

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                down = self._down
            if down:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._live |= {client, upstream}
            losing = threading.Event()  # the server's next bytes are to be lost
            threading.Thread(
                target=self._upward, args=(client, upstream, losing), daemon=True
            ).start()
            threading.Thread(
                target=self._downward, args=(upstream, client, losing), daemon=True
            ).start()

    def _upward(
        self, client: socket.socket, upstream: socket.socket, losing: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    if self._armed:
                        self._armed = False
                        losing.set()  # before the bytes go: their answer cannot slip through
                upstream.sendall(data)
        _close(client, upstream)

    def _downward(
        self, upstream: socket.socket, client: socket.socket, losing: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if losing.is_set():
                    with self._lock:
                        self._down = True
                    _close(client, upstream)
                    self.cut.set()
                    return
                client.sendall(data)
        _close(client, upstream)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


OUTAGE_S = 11.0
"""Longer than the 10 s a line used to be given before it was dropped as "not sent"."""


def test_chat_keeps_lines_through_an_outage_and_a_lost_answer_stores_them_once(
    node: NodeProcess,
) -> None:
    http, tcp = node.endpoints["http"], node.endpoints["tcp"]
    host, port = tcp.rsplit(":", 1)
    proxy = CuttingProxy((host, 5150), (host, int(port)))
    api = SyncHttpClient(http)

    def stored() -> list[str]:
        page = api.messagesync("pete", "olga", ChannelType.PERSON, 1)
        return [json.loads(m.payload)["content"] for m in page.messages]

    args = ("chat", "--uid", "olga", "--to", "pete", "--node", proxy.address, "--http", http)
    with raftchat(*args) as (proc, _out, err):
        err.until("# olga chatting with pete")
        assert proc.stdin is not None

        # The node is out of reach for a while; a line typed meanwhile waits for it.
        proxy.cut_now()
        said = err.until("# disconnected from node 1")
        assert said[-1].startswith("# disconnected from node 1 (connection closed by the server)")
        proc.stdin.write("typed during the outage\n")
        proc.stdin.flush()
        said = err.until("# queued until connected")
        assert said[-1] == "# queued until connected (1 line waiting)"
        time.sleep(OUTAGE_S)
        proxy.heal()
        said = err.until("# connected")
        assert any(line.startswith(f"# cannot connect to {proxy.address} (") for line in said)
        assert said[-1] == f"# connected to node 1 ({proxy.address}); sending 1 queued line"
        eventually(lambda: stored() == ["typed during the outage"], what="the queued line")

        # The SEND reaches the node, which stores the line; its SENDACK is lost with the
        # connection. The line is sent again with its client_msg_no, and the node answers
        # with the message it already has; then the next line goes.
        proxy.lose_next_answer()
        proc.stdin.write("first\n")
        proc.stdin.flush()
        assert proxy.cut.wait(20)
        assert stored() == ["typed during the outage", "first"]
        proc.stdin.write("second\n")
        proc.stdin.flush()
        said = err.until("# disconnected from node 1")
        assert said[-1].endswith("; 1 line queued")
        proxy.heal()
        said = err.until("# connected")
        assert said[-1] == f"# connected to node 1 ({proxy.address}); sending 2 queued lines"

        # The end of input waits for the queue: everything is stored when it quits.
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
        assert err.rest()[-1:] == ["# bye"]
    assert stored() == ["typed during the outage", "first", "second"]
    api.close()
    proxy.close()
