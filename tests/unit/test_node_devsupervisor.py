"""``raftchat dev``'s restarts: the exit described, and a node that dies at once does not spin."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from launcher.devcluster import NodeProcess
from node.devsupervisor import RestartBackoff, Supervisor, exit_description


def test_exit_description() -> None:
    assert exit_description(1) == "exited with status 1"
    assert exit_description(0) == "exited with status 0"
    assert exit_description(-signal.SIGKILL) == "was killed by SIGKILL"
    assert exit_description(-200) == "was killed by signal 200"


def test_backoff_doubles_while_a_node_dies_at_once_and_resets_after_a_stable_run() -> None:
    b = RestartBackoff(first_s=1, max_s=30, stable_s=30)
    assert [b.after_exit(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.after_exit(31) == 1  # it ran long enough: a fresh failure
    assert b.after_exit(2) == 2


@dataclass
class _Popen:
    pid: int
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class _Node:
    """What the supervisor uses of a NodeProcess."""

    node_id: int
    log_path: Path = Path("node.log")
    proc: _Popen | None = None
    launches: int = 0
    ready: bool = False
    pids: list[int] = field(default_factory=lambda: [100, 101, 102, 103])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def launch(self) -> None:
        self.launches += 1
        self.ready = False
        self.proc = _Popen(self.pids[self.launches])

    def ready_within(self, timeout_s: float) -> bool:
        return self.ready


def test_supervisor_names_the_exit_waits_restarts_and_reports_ready() -> None:
    now = [0.0]
    out: list[str] = []
    node = _Node(2, proc=_Popen(100))
    sup = Supervisor([cast(NodeProcess, cast(Any, node))], out.append, clock=lambda: now[0])
    sup.poll()
    assert out == []
    now[0] = 5.0
    node.proc = _Popen(100, returncode=-signal.SIGKILL)
    sup.poll()
    assert out == ["node 2 was killed by SIGKILL; restarting it in 1 s (log: node.log)"]
    now[0] = 5.5
    sup.poll()
    assert node.launches == 0  # still waiting
    now[0] = 6.0
    sup.poll()
    assert node.launches == 1
    assert out[-1] == "node 2 restarted (pid 101)"
    sup.poll()
    assert len(out) == 2  # not ready yet: nothing to say
    node.ready = True
    sup.poll()
    assert out[-1] == "node 2 is ready again (pid 101)"
    # Dies again at once: the next delay is longer.
    node.proc = _Popen(101, returncode=2)
    now[0] = 6.1
    sup.poll()
    assert out[-1] == "node 2 exited with status 2; restarting it in 2 s (log: node.log)"
    now[0] = 7.0
    sup.poll()
    assert node.launches == 1
