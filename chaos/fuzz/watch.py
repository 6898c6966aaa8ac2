"""Watching the nodes while the fuzzer works: crashes (a node process that exited) and restarts,
memory (VmRSS from /proc), and stalls (how long each node takes to answer ``GET /health``).

A crash is recorded with the exit status, the last lines of the node's log and the exception
line that ended it, and the node is restarted on its data so the run goes on; the run's verdict
fails on any crash.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..cluster import ChaosCluster
from ..http import HttpError

POLL_S = 0.1
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 5.0
RSS_EVERY_S = 2.0
LOG_TAIL_LINES = 40
_LITERAL = re.compile(r"b?'(?:[^'\\]|\\.)*'|b?\"(?:[^\"\\]|\\.)*\"")
_NUMBER = re.compile(r"\b\d+\b")
_EXCEPTION_LINE = re.compile(r"^[\s|+]*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*)$")


@dataclass(slots=True)
class Crash:
    node: int
    mono: float
    wall: float
    exit_code: int | None
    signature: str
    """The last exception line of the log (``module.Error: message``), for grouping."""
    log_tail: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "mono": round(self.mono, 3),
            "time": round(self.wall, 3),
            "exit_code": self.exit_code,
            "signature": self.signature,
            "log_tail": self.log_tail,
        }


@dataclass(slots=True)
class Probe:
    node: int
    mono: float
    latency_s: float | None
    """None: no answer within ``PROBE_TIMEOUT_S`` (or the connection failed)."""
    running: bool
    """The node process ran when the probe began (a probe of a dead node is no stall)."""


def rss_kib(pid: int) -> int | None:
    """Resident memory of a process in KiB (VmRSS), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _text_lines(lines: list[str]) -> list[str]:
    """The log's lines as text: a JSON record (``log.format = "json"``, where a traceback written
    to stderr is one record) gives the lines of its message and of its exception."""
    out: list[str] = []
    for line in lines:
        try:
            record = json.loads(line) if line.startswith("{") else None
        except ValueError:
            record = None
        if not isinstance(record, dict):
            out.append(line)
            continue
        for key in ("msg", "exc"):
            if isinstance(record.get(key), str):
                out.extend(record[key].splitlines())
    return out


def crash_signature(lines: list[str]) -> str:
    """The last exception line of a log, with byte and string literals and numbers blanked so
    that crashes of one cause group together."""
    for line in reversed(_text_lines(lines)):
        m = _EXCEPTION_LINE.match(line)
        if m:
            text = _LITERAL.sub("…", m.group(1).strip())
            return _NUMBER.sub("N", text)[:300]
    return "(no exception in the log)"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


@dataclass
class NodeWatch:
    cluster: ChaosCluster
    crashes: list[Crash] = field(default_factory=list)
    restarts: int = 0
    probes: list[Probe] = field(default_factory=list)
    rss_peak_kib: dict[int, int] = field(default_factory=dict)
    stopping: bool = False
    """Set before the run stops the nodes itself, so that those exits are not crashes."""

    def rss(self) -> dict[int, int | None]:
        out: dict[int, int | None] = {}
        for n, proc in sorted(self.cluster.nodes.items()):
            pid = proc.proc.pid if proc.proc is not None and proc.running else None
            out[n] = rss_kib(pid) if pid is not None else None
        return out

    async def run(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._crashes)
        nursery.start_soon(self._memory)
        for n in sorted(self.cluster.hosts):
            nursery.start_soon(self._probe, n)

    async def _crashes(self) -> None:
        while True:
            for n, proc in sorted(self.cluster.nodes.items()):
                if self.stopping or proc.proc is None or proc.running:
                    continue
                tail = log_tail(proc.log_path)
                self.crashes.append(
                    Crash(
                        node=n,
                        mono=time.monotonic(),
                        wall=time.time(),
                        exit_code=proc.proc.returncode,
                        signature=crash_signature(tail),
                        log_tail=tail,
                    )
                )
                self.cluster.restart(n)
                self.restarts += 1
            await trio.sleep(POLL_S)

    async def _memory(self) -> None:
        while True:
            for n, kib in self.rss().items():
                if kib is not None:
                    self.rss_peak_kib[n] = max(self.rss_peak_kib.get(n, 0), kib)
            await trio.sleep(RSS_EVERY_S)

    async def _probe(self, node: int) -> None:
        while True:
            started = time.monotonic()
            running = self.cluster.nodes[node].running
            latency: float | None
            try:
                await self.cluster.call(node, "GET", "/health", timeout_s=PROBE_TIMEOUT_S)
                latency = time.monotonic() - started
            except HttpError as e:
                if not isinstance(e.__cause__, trio.TooSlowError):
                    # Refused or reset: the node is down or not listening yet, not stalled.
                    running = False
                latency = None
            self.probes.append(Probe(node, started, latency, running))
            await trio.sleep(max(0.0, PROBE_EVERY_S - (time.monotonic() - started)))

    async def all_running(self, timeout_s: float) -> bool:
        """Wait until every node process runs and answers /health (a restart completed)."""
        deadline = trio.current_time() + timeout_s
        while trio.current_time() < deadline:
            up = True
            for n in sorted(self.cluster.hosts):
                if not self.cluster.nodes[n].running:
                    up = False
                    break
                try:
                    code, _ = await self.cluster.call(n, "GET", "/health", timeout_s=3.0)
                except HttpError:
                    code = 0
                if code != 200:
                    up = False
                    break
            if up:
                return True
            await trio.sleep(0.5)
        return False
