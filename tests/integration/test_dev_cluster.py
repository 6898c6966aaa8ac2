"""``raftchat dev`` as a developer runs it: three real node processes that keep running when one
of them dies. The dead node is named with how it ended and started again; each node's process
title names it; its log holds JSON lines only; Ctrl-C stops everything."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import _PROCESS_OCTET

ROOT = Path(__file__).resolve().parents[2]
# Far from the addresses conftest hands out (127.P.1-250.x, counting up from 127.P.1.10).
HOST_BASE = f"127.{_PROCESS_OCTET}.250"
DEV = [sys.executable, "-m", "node.cli", "dev"]


class DevRun:
    """A ``raftchat dev`` process in its own process group, its output read line by line."""

    def __init__(self, data: Path) -> None:
        self.proc = subprocess.Popen(
            [*DEV, "--nodes", "3", "--data", str(data), "--host-base", HOST_BASE],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a terminal's Ctrl-C reaches the whole group: so can ours
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
        """The next output line that matches ``pattern`` (lines before it are kept in seen)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no line like {pattern!r}; output: {self.seen}") from None
            if line is None:
                raise AssertionError(f"dev exited before {pattern!r}; output: {self.seen}")
            self.seen.append(line)
            m = re.search(pattern, line)
            if m is not None:
                return m

    def rest(self) -> list[str]:
        out = []
        while (line := self.lines.get(timeout=10)) is not None:
            out.append(line)
        self.seen.extend(out)
        return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def thread_names(pid: int) -> set[str]:
    names = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            names.add((task / "comm").read_text().strip())
    return names


def test_dev_restarts_a_killed_node_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dev = DevRun(data)
    pids: dict[int, int] = {}
    try:
        for _ in range(3):
            m = dev.expect(r"^  node (\d) \(pid (\d+)\): HTTP ")
            pids[int(m[1])] = int(m[2])
        dev.expect("A node that exits is started again")
        for node_id, pid in pids.items():
            host = f"{HOST_BASE}.{10 + node_id}"
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            assert cmdline == f"raftchat node {node_id} {host}"
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            assert comm == f"raftchat node {node_id}"  # the kernel's 15 bytes
            named = {"raft-driver", "wal-flusher", "grpc-servers", "grpc-poller"}
            assert named <= thread_names(pid), thread_names(pid)
            assert not {"grpc-peer", "grpc-public"} & thread_names(pid)  # one loop for both

        os.kill(pids[2], signal.SIGKILL)
        dev.expect(r"raftchat dev: node 2 was killed by SIGKILL; restarting it in 1 s", 10)
        new_pid = int(dev.expect(r"raftchat dev: node 2 restarted \(pid (\d+)\)", 10)[1])
        assert new_pid != pids[2]
        dev.expect(rf"raftchat dev: node 2 is ready again \(pid {new_pid}\)", 60)
        assert alive(pids[1]) and alive(pids[3]), dev.seen  # the others kept running
        health = httpx.get(f"http://{HOST_BASE}.12:5001/health", timeout=5)
        assert health.status_code == 200, health.text
        cmdline = Path(f"/proc/{new_pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        assert cmdline == f"raftchat node 2 {HOST_BASE}.12"
        pids[2] = new_pid

        os.killpg(dev.proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        assert dev.proc.wait(30) == 0
        rest = dev.rest()
        assert rest[-1] == "raftchat dev: stopped", dev.seen
        assert not any("exited" in ln or "killed" in ln for ln in rest), rest
        assert not any(alive(pid) for pid in pids.values())
    finally:
        if dev.proc.poll() is None:
            os.killpg(dev.proc.pid, signal.SIGTERM)
            dev.proc.wait(30)
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    # Every line the nodes logged, also node 2's killed first life and grpc's own lines.
    for node_id in pids:
        lines = (data / f"node{node_id}.log").read_text().splitlines()
        assert lines, f"node {node_id} logged nothing"
        for line in lines:
            record = json.loads(line)
            assert record["node"] == node_id, line
