"""``raftchat chat`` on a real terminal: two clients in tmux panes against a real node, driven
with send-keys and read with capture-pane, as a person would see them.

tmux is a Debian package that ``make test`` and CI install; without it the test is skipped,
except under CI, where it fails.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client.http import SyncHttpClient
from launcher.devcluster import NodeProcess
from proto.wkproto import ChannelType

ROOT = Path(__file__).resolve().parents[2]
EXITED = "[exit status]"


class Tmux:
    """A private tmux server (its own socket) whose windows run commands; a pane stays after
    its command ends, so that its last words and exit status can be read.

    The exit status is printed by a shell around the command: tmux 3.3a does not always reap
    a pane's process (in some runs here it stayed a zombie for good, the pane "alive")."""

    def __init__(self, tmp: Path) -> None:
        self.socket = tmp / "tmux.sock"
        conf = tmp / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 5000\n")
        self._base = ["tmux", "-S", str(self.socket), "-f", str(conf)]

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            [*self._base, *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout

    def start(self, name: str, command: list[str]) -> None:
        shell = f'{shlex.join(command)}; echo "{EXITED} $?"'
        self.tmux("new-session", "-d", "-s", name, "-x", "120", "-y", "40", "-c", str(ROOT), shell)

    def type(self, name: str, text: str) -> None:
        self.tmux("send-keys", "-t", name, "-l", text)

    def key(self, name: str, key: str) -> None:
        self.tmux("send-keys", "-t", name, key)

    def screen(self, name: str) -> list[str]:
        """The pane's lines, scrollback included, wrapped lines joined, trailing blanks cut."""
        lines = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", name).split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        return [line.rstrip() for line in lines]

    def wait(
        self, name: str, check: Callable[[list[str]], bool], what: str, timeout_s: float = 20.0
    ) -> list[str]:
        """Poll the pane until ``check(lines)`` holds (the terminal is observed from outside:
        there is no event to wait on)."""
        deadline = time.monotonic() + timeout_s
        while True:
            lines = self.screen(name)
            if check(lines):
                return lines
            if time.monotonic() > deadline:
                shown = "\n".join(lines)
                raise AssertionError(f"{name}: no {what} within {timeout_s} s; screen:\n{shown}")
            time.sleep(0.05)

    def wait_exit(self, name: str) -> int:
        """The command's exit status, waiting for it to end."""

        def exited(lines: list[str]) -> list[str]:
            return [line for line in lines if line.startswith(EXITED)]

        (line,) = exited(self.wait(name, lambda s: bool(exited(s)), "exit"))
        return int(line.split()[-1])

    def kill(self) -> None:
        subprocess.run([*self._base, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must be able to run the terminal tests: tmux is not installed")
        pytest.skip("tmux is not installed (apt-get install tmux)")
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        t.kill()


def chat(uid: str, peer: str, node: NodeProcess) -> list[str]:
    return [
        sys.executable, "-m", "node.cli", "chat", "--uid", uid, "--to", peer,
        "--node", node.endpoints["tcp"], "--http", node.endpoints["http"],
    ]  # fmt: skip


def last(lines: list[str]) -> str:
    return lines[-1] if lines else ""


def test_two_terminal_clients_through_typing_an_outage_and_quitting(
    tmux: Tmux, node: NodeProcess
) -> None:
    tmux.start("alice", chat("alice", "bob", node))
    tmux.start("bob", chat("bob", "alice", node))
    for name in ("alice", "bob"):
        tmux.wait(name, lambda s, n=name: last(s) == f"{n}>", "prompt")

    # A message arrives while alice is half-way through a line: it is printed above her
    # prompt, and what she typed stays on the prompt line, where she goes on typing.
    tmux.type("alice", "half a li")
    tmux.wait("alice", lambda s: last(s) == "alice> half a li", "half-typed line")
    tmux.type("bob", "hello alice")
    tmux.key("bob", "Enter")
    # (The editor erases the prompt, prints, and draws the prompt again: wait for the end.)
    screen = tmux.wait(
        "alice",
        lambda s: "[1] bob: hello alice" in s and last(s) == "alice> half a li",
        "bob's message above the half-typed line",
    )
    assert [line for line in screen if "half a li" in line] == ["alice> half a li"]
    tmux.type("alice", "ne")
    tmux.key("alice", "Enter")
    # bob sees the text, not the JSON payload it travels in.
    screen = tmux.wait("bob", lambda s: "[2] alice: half a line" in s, "alice's line")
    assert not any('"content"' in line for line in screen)
    api = SyncHttpClient(node.endpoints["http"])
    (stored,) = api.messagesync("bob", "alice", ChannelType.PERSON, 2).messages
    assert stored.payload == b'{"type":1,"content":"half a line"}'

    # The node goes away: both clients say so, and a line typed meanwhile is queued.
    node.stop()
    for name in ("alice", "bob"):
        tmux.wait(
            name,
            lambda s: any(
                line.startswith("# disconnected from node 1 (") and "retrying in" in line
                for line in s
            ),
            "disconnected status line",
        )
    tmux.wait("alice", lambda s: last(s) == "alice (offline)>", "offline prompt")
    tmux.type("alice", "typed during the outage")
    tmux.key("alice", "Enter")
    tmux.wait("alice", lambda s: "# queued until connected (1 line waiting)" in s, "queued note")

    # The node is back: alice sends what waited, bob receives it exactly once.
    node.start()
    tmux.wait("alice", lambda s: "; sending 1 queued line" in " ".join(s), "reconnection")
    tmux.wait("bob", lambda s: "[3] alice: typed during the outage" in s, "the queued line")
    # Anything sent after it reaches bob after it: a duplicate would be on screen by then.
    api.send("alice", "bob", ChannelType.PERSON, b'{"type":1,"content":"later"}')
    screen = tmux.wait("bob", lambda s: "[4] alice: later" in s, "the later line")
    assert sum("typed during the outage" in line for line in screen) == 1
    assert [m.message_seq for m in api.messagesync("bob", "alice", 1, 1).messages] == [1, 2, 3, 4]
    api.close()

    # Ctrl-C and Ctrl-D: one goodbye line each, no traceback.
    tmux.key("alice", "C-c")
    assert tmux.wait_exit("alice") == 130
    tmux.key("bob", "C-d")
    assert tmux.wait_exit("bob") == 0
    for name, bye in (("alice", "# bye (interrupted)"), ("bob", "# bye")):
        screen = tmux.screen(name)
        assert bye in screen
        assert not any("Traceback" in line for line in screen)
