"""CPU spent by processes, and by each named thread of a node, over a measured window.

Read from ``/proc`` (Linux): ``/proc/<pid>/stat`` for a process, ``/proc/<pid>/task/<tid>/stat``
and ``comm`` for its threads. Nodes name their threads (``node/proctitle.py``), so the CPU a
send costs can be charged to the trio loop, the Raft driver, the gRPC server and so on."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

MAIN_THREAD = "trio-main"
"""The node's main thread (tid == pid), which runs the trio loop: the gateway, HTTP, routing."""


def _stat_cpu(raw: str) -> float:
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (every thread), from ``/proc/<pid>/stat``."""
    try:
        return _stat_cpu(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return None


def thread_group(pid: int, tid: int, comm: str) -> str:
    """The row a thread's CPU is counted in: numbered pools (trio's worker threads, grpc's
    event engine) are one row each; a thread nobody named is ``unnamed``."""
    if tid == pid:
        return MAIN_THREAD
    if comm.startswith("Trio thread") or " from " in comm:
        return "trio-workers"  # trio names a busy worker "<function> from <task>"
    if comm.startswith("raftchat node") or comm.startswith("python"):
        return "unnamed"
    return re.sub(r"[-_ ]?\d+$", "", comm) or "unnamed"


def thread_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """{tid: (row, CPU seconds)} for every thread of ``pid`` alive now."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for name in tids:
        tid = int(name)
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:  # the thread ended in between
            continue
        out[tid] = (thread_group(pid, tid, comm), _stat_cpu(raw))
    return out


def per_thread_pct(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], elapsed: float
) -> dict[str, float]:
    """% of one core per row between two ``thread_seconds`` readings. A thread that started in
    between counts from zero; one that ended in between is lost (its CPU stays in the
    process's total, which is read separately)."""
    rows: dict[str, float] = {}
    for tid, (row, seconds) in after.items():
        spent = seconds - before.get(tid, (row, 0.0))[1]
        rows[row] = rows.get(row, 0.0) + spent
    return {
        row: round(100.0 * spent / elapsed, 1)
        for row, spent in sorted(rows.items(), key=lambda kv: -kv[1])
    }


def machine_times() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU together, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return float(total - idle), float(total)


class CpuMeter:
    """CPU % of one core per named process between ``start()`` and ``stop()``, and per thread
    row for the processes named in ``threads_of``."""

    def __init__(self, pids: dict[str, int], threads_of: tuple[str, ...] = ()) -> None:
        self.pids = pids
        self.threads_of = threads_of
        self._t0 = 0.0
        self._cpu0: dict[str, float | None] = {}
        self._threads0: dict[str, dict[int, tuple[str, float]]] = {}
        self._machine0 = (0.0, 0.0)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._threads0 = {name: thread_seconds(self.pids[name]) for name in self.threads_of}
        self._machine0 = machine_times()

    def stop(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self._t0
        out: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            before, after = self._cpu0.get(name), cpu_seconds(pid)
            out[name] = (
                None
                if before is None or after is None or elapsed <= 0
                else round(100.0 * (after - before) / elapsed, 1)
            )
        threads = {
            name: per_thread_pct(before, thread_seconds(self.pids[name]), elapsed)
            for name, before in self._threads0.items()
            if elapsed > 0
        }
        busy1, total1 = machine_times()
        busy0, total0 = self._machine0
        cores = os.cpu_count() or 1
        machine = 100.0 * (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
        ours = sum(v for v in out.values() if v is not None)
        return {
            "seconds": round(elapsed, 2),
            "pct_of_one_core": out,
            "threads_pct_of_one_core": threads,
            "machine_busy_pct": round(machine, 1),
            "cores": cores,
            # Everything else the machine ran meanwhile (other programs, the kernel's own work
            # on behalf of no process); a large value means the numbers are not the cluster's.
            "others_pct_of_one_core": round(max(0.0, machine * cores - ours), 1),
        }


def ms_per_send(pct_of_one_core: float, sends_per_s: float) -> float | None:
    """CPU milliseconds per acknowledged send, from a % of one core and an acked rate."""
    if sends_per_s <= 0:
        return None
    return round(10.0 * pct_of_one_core / sends_per_s, 2)


def cpu_per_send(
    load_cpu: dict[str, Any], sends_per_s: float, idle: dict[str, Any] | None
) -> dict[str, Any]:
    """CPU milliseconds per acknowledged send: the cluster's, each node's and each thread row's
    (summed over nodes), and, when an idle phase was measured, the same above idle (what a
    send adds to what the nodes spend with nothing to do)."""
    pct = load_cpu["pct_of_one_core"]
    nodes = {n: v for n, v in pct.items() if n in load_cpu["threads_pct_of_one_core"] and v}
    rows = _summed_over_nodes(load_cpu["threads_pct_of_one_core"])
    out: dict[str, Any] = {
        "cluster_ms": ms_per_send(sum(nodes.values()), sends_per_s),
        "nodes_ms": {n: ms_per_send(v, sends_per_s) for n, v in nodes.items()},
        "threads_ms": {r: ms_per_send(v, sends_per_s) for r, v in _by_value(rows)},
    }
    if idle is not None:
        idle_rows = _summed_over_nodes(idle.get("threads_pct_of_one_core", {}))
        idle_total = sum(v for n, v in idle["pct_of_one_core"].items() if n in nodes)
        out["cluster_above_idle_ms"] = ms_per_send(sum(nodes.values()) - idle_total, sends_per_s)
        above = {r: v - idle_rows.get(r, 0.0) for r, v in rows.items()}
        out["threads_above_idle_ms"] = {r: ms_per_send(v, sends_per_s) for r, v in _by_value(above)}
    return out


def _summed_over_nodes(threads_by_node: dict[str, dict[str, float]]) -> dict[str, float]:
    rows: dict[str, float] = {}
    for threads in threads_by_node.values():
        for row, value in threads.items():
            rows[row] = rows.get(row, 0.0) + value
    return rows


def _by_value(rows: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(rows.items(), key=lambda kv: -kv[1])
