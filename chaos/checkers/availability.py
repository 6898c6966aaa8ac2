"""P12, Jepsen's availability graphs in numbers: how long each fault kept each channel and slot
group from accepting writes, how long after the heal the first write got through, and what
send latency looked like before, during and after faults.

A measurement first: it is valid unless a ``recovery_bound_s`` is given and some channel or
group that was being written took longer than that after a heal (or never recovered). With no
fault window there is nothing to measure: "no data"."""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from chaos.history import History, NemesisValue

from .base import CheckResult, Examples, HistoryLike, index_of, percentile

WORST_CHANNELS_PER_WINDOW = 10


@dataclass(slots=True)
class FaultWindow:
    """From the start op's invocation (the fault may bite from then on) to the stop op's
    completion (the heal). A fault never stopped lasts to the end of the history."""

    fault: str
    fault_id: str | None
    targets: tuple[str, ...]
    start_mono: float
    stop_mono: float
    healed: bool
    start_index: int = -1
    stop_index: int = -1
    """History index of the stop op that healed it (-1 while it never healed)."""

    @property
    def duration_s(self) -> float:
        return self.stop_mono - self.start_mono


def fault_windows(history: HistoryLike) -> list[FaultWindow]:
    h = History.of(history)
    open_: dict[str, list[FaultWindow]] = defaultdict(list)
    windows: list[FaultWindow] = []
    for op in h.ops_of("nemesis"):
        v = op.value
        if not isinstance(v, NemesisValue):
            continue
        key = v.fault_id if v.fault_id is not None else v.fault
        if v.action == "start":
            if op.type == "fail":
                continue  # the fault never began (a join the cluster refused, say)
            w = FaultWindow(
                v.fault, v.fault_id, v.targets, op.invoke_mono, h.end_mono, False, op.index
            )
            open_[key].append(w)
            windows.append(w)
        elif open_[key]:
            w = open_[key].pop(0)
            w.stop_mono = op.complete_mono if op.completion is not None else op.invoke_mono
            w.healed = True
            w.stop_index = op.index
    return windows


@dataclass(slots=True)
class _Scope:
    """The sends of one channel or one slot group, as sorted time lists."""

    ok_done: list[float] = field(default_factory=list)
    invoked: list[float] = field(default_factory=list)


def _scope_stats(scope: _Scope, w: FaultWindow) -> dict[str, Any] | None:
    lo = bisect.bisect_left(scope.invoked, w.start_mono)
    attempts = bisect.bisect_right(scope.invoked, w.stop_mono) - lo
    if attempts == 0:
        return None  # nobody wrote here during the fault: silence is not unavailability
    a = bisect.bisect_left(scope.ok_done, w.start_mono)
    b = bisect.bisect_right(scope.ok_done, w.stop_mono)
    points = [w.start_mono, *scope.ok_done[a:b], w.stop_mono]
    gap = max(y - x for x, y in itertools.pairwise(points))
    recovery: float | None = None
    tried_after = bisect.bisect_right(scope.invoked, w.stop_mono) < len(scope.invoked)
    if b < len(scope.ok_done):
        recovery = scope.ok_done[b] - w.stop_mono
    return {
        "attempts_in_window": attempts,
        "ok_in_window": b - a,
        "longest_gap_s": round(gap, 6),
        "recovery_s": None if recovery is None else round(recovery, 6),
        # Written to after the heal but never accepted a write again.
        "unrecovered": w.healed and recovery is None and tried_after,
    }


def _latency(values_s: list[float]) -> dict[str, float | int | None]:
    ms = sorted(v * 1000 for v in values_s)
    return {
        "count": len(ms),
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": ms[-1] if ms else None,
    }


def check_availability(
    history: HistoryLike, *, recovery_bound_s: float | None = None
) -> CheckResult:
    h, ix = index_of(history)
    windows = fault_windows(h)
    channels: dict[str, _Scope] = defaultdict(_Scope)
    groups: dict[int, _Scope] = defaultdict(_Scope)
    ok_latency: list[tuple[float, float]] = []  # (invoke mono, latency s)
    for s in ix.sends:
        scopes = [channels[s.channel]]
        if s.value.group is not None:
            scopes.append(groups[s.value.group])
        for scope in scopes:
            scope.invoked.append(s.op.invoke_mono)
            if s.outcome == "ok":
                scope.ok_done.append(s.op.complete_mono)
        if s.outcome == "ok":
            ok_latency.append((s.op.invoke_mono, s.op.complete_mono - s.op.invoke_mono))
    for scope in (*channels.values(), *groups.values()):
        scope.invoked.sort()
        scope.ok_done.sort()
    ok_latency.sort()
    ok_invoked = [t for t, _ in ok_latency]

    ex = Examples()
    table: list[dict[str, Any]] = []
    max_gap = max_recovery = 0.0
    unrecovered = 0
    for w in windows:
        per_channel = {c: st for c, sc in channels.items() if (st := _scope_stats(sc, w))}
        per_group = {str(g): st for g, sc in groups.items() if (st := _scope_stats(sc, w))}
        scoped = [*per_channel.values(), *per_group.values()]
        gap = max((st["longest_gap_s"] for st in scoped), default=0.0)
        recoveries = [st["recovery_s"] for st in scoped if st["recovery_s"] is not None]
        recovery = max(recoveries, default=None)
        stuck = [c for c, st in per_channel.items() if st["unrecovered"]]
        stuck_groups = [g for g, st in per_group.items() if st["unrecovered"]]
        max_gap = max(max_gap, gap)
        max_recovery = max(max_recovery, recovery or 0.0)
        unrecovered += len(stuck) + len(stuck_groups)
        lo = bisect.bisect_left(ok_invoked, w.start_mono)
        hi = bisect.bisect_right(ok_invoked, w.stop_mono)
        in_window = [lat for _, lat in ok_latency[lo:hi]]
        worst = sorted(per_channel.items(), key=lambda kv: -kv[1]["longest_gap_s"])
        table.append(
            {
                "fault": w.fault,
                "fault_id": w.fault_id,
                "targets": list(w.targets),
                "start_mono": w.start_mono,
                "stop_mono": w.stop_mono,
                "duration_s": round(w.duration_s, 6),
                "healed": w.healed,
                "longest_gap_s": gap,
                "max_recovery_s": recovery,
                "unrecovered_channels": stuck,
                "unrecovered_groups": stuck_groups,
                "latency_ms": _latency(in_window),
                "groups": per_group,
                "worst_channels": dict(worst[:WORST_CHANNELS_PER_WINDOW]),
            }
        )
        if recovery_bound_s is None:
            continue
        for kind, per in (("channel", per_channel), ("group", per_group)):
            for name, st in per.items():
                late = st["recovery_s"] is not None and st["recovery_s"] > recovery_bound_s
                if st["unrecovered"] or late:
                    ex.add(
                        f"{kind}_unrecovered" if st["unrecovered"] else f"{kind}_slow_recovery",
                        fault=w.fault,
                        targets=list(w.targets),
                        **{kind: name},
                        recovery_s=st["recovery_s"],
                        bound_s=recovery_bound_s,
                        longest_gap_s=st["longest_gap_s"],
                    )

    counts: dict[str, int | float | None] = {
        "fault_windows": len(windows),
        "never_healed": sum(1 for w in windows if not w.healed),
        "max_gap_s": max_gap,
        "max_recovery_s": max_recovery,
        "unrecovered": unrecovered,
    }
    for phase, lats in _phases(ok_latency, windows).items():
        stats = _latency(lats)
        counts[f"ok_sends_{phase}"] = stats["count"]
        for q in ("p50", "p99", "max"):
            counts[f"latency_ms_{q}_{phase}"] = stats[q]
    return CheckResult(
        name="availability",
        valid=not ex,
        counts=counts,
        examples=ex.take(),
        details={"windows": table},
        no_data=not windows,
    )


def _phases(
    ok_latency: list[tuple[float, float]], windows: list[FaultWindow]
) -> dict[str, list[float]]:
    """Split ok-send latencies by when the send was invoked: before the first fault, inside any
    fault window, or outside every window after the first one began."""
    spans = sorted((w.start_mono, w.stop_mono) for w in windows)
    merged: list[list[float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    starts = [m[0] for m in merged]
    out: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for t, lat in ok_latency:
        i = bisect.bisect_right(starts, t) - 1
        if i < 0:
            out["before"].append(lat)
        elif t <= merged[i][1]:
            out["during"].append(lat)
        else:
            out["after"].append(lat)
    return out
