"""Keeps the nodes of ``raftchat dev`` running: a node that exits is named with its exit status
and started again, so that a failover can be watched from a terminal (kill a node, see the others
take over, see it come back and catch up).

A node that dies right after it starts (a refused configuration, a port taken by something else)
would otherwise be restarted in a tight loop: the delay before a restart doubles while a node
keeps dying within ``STABLE_S`` of its start, up to ``MAX_DELAY_S``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from launcher.devcluster import NodeProcess

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
STABLE_S = 30.0
"""A node that ran this long before it exited starts again after ``FIRST_DELAY_S``."""


@dataclass
class RestartBackoff:
    """The delay before the next restart of one node."""

    first_s: float = FIRST_DELAY_S
    max_s: float = MAX_DELAY_S
    stable_s: float = STABLE_S
    _next_s: float = 0.0

    def __post_init__(self) -> None:
        self._next_s = self.first_s

    def after_exit(self, ran_s: float) -> float:
        """The delay before restarting a node that exited after running ``ran_s`` seconds."""
        if ran_s >= self.stable_s:
            self._next_s = self.first_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


def exit_description(returncode: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL`` (Popen's negative return codes)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


@dataclass
class _Watched:
    proc: NodeProcess
    backoff: RestartBackoff
    started: float
    restart_at: float | None = None
    """When the node, seen exited, is to start again."""
    awaiting_ready: bool = False
    """Restarted, and its ready line not yet seen."""


class Supervisor:
    """Call ``poll()`` every fraction of a second; it never blocks on a node."""

    def __init__(
        self,
        procs: list[NodeProcess],
        report: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        backoff: Callable[[], RestartBackoff] = RestartBackoff,
    ) -> None:
        self._report = report
        self._clock = clock
        now = clock()
        self._nodes = [_Watched(p, backoff(), now) for p in procs]

    def poll(self) -> None:
        now = self._clock()
        for w in self._nodes:
            p = w.proc
            if w.awaiting_ready and p.running and p.ready_within(0):
                w.awaiting_ready = False
                pid = p.proc.pid if p.proc is not None else "?"
                self._report(f"node {p.node_id} is ready again (pid {pid})")
            if w.restart_at is None:
                if p.proc is None or p.running:
                    continue
                delay = w.backoff.after_exit(now - w.started)
                w.restart_at = now + delay
                w.awaiting_ready = False
                self._report(
                    f"node {p.node_id} {exit_description(p.proc.returncode)}; "
                    f"restarting it in {delay:g} s (log: {p.log_path})"
                )
            elif now >= w.restart_at:
                w.restart_at = None
                w.started = now
                p.launch()
                w.awaiting_ready = True
                pid = p.proc.pid if p.proc is not None else "?"
                self._report(f"node {p.node_id} restarted (pid {pid})")
