"""The fuzz run's report: figures from the worker, the node watch and the checkers, the
verdict, and its text form (stdout) next to ``fuzz.json`` in the run's folder.

Stalls are measured, not judged: per node, the latency of ``GET /health`` probes, and for the
workload, the latency and the unknown outcomes of its sends, each before, during and after the
fuzzing. The verdict fails on a node crash, on any checker (lost, duplicated, reordered...
acknowledged messages), on an HTTP 5xx other than 503 or a gRPC INTERNAL/UNKNOWN status, and on
a cluster that is not healthy again after the fuzzing, on replicas that never converge to one
applied index with one digest, and on any CRITICAL line in a node's log (the level of a replica
that found its state diverged).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkers import Verdict
from ..checkers.base import percentile
from ..history import History
from .watch import Crash, Probe

STALL_S = 1.0
"""A probe answered later than this (or not at all, while the node ran) counts as a stall."""
SUSPECT_WINDOW_S = 15.0
"""Scenarios to a node that began this long before its crash are listed as suspects."""
MAX_SUSPECTS = 60
SERVER_ERROR_ANSWERS = frozenset(
    {
        "grpc:INTERNAL",
        "grpc:UNKNOWN",
        "goaway:INTERNAL_ERROR",
        "rst_stream:INTERNAL_ERROR",
        "sendack:SYSTEM_ERROR",
    }
)
_LOG_MSG = re.compile(r'"msg": "([^"]*)"')


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    stop: float

    def phase(self, mono: float) -> str:
        if mono < self.start:
            return "before"
        return "during" if mono <= self.stop else "after"


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def probe_stalls(probes: Iterable[Probe], window: Window) -> dict[str, Any]:
    """Per node and phase: answered probes' p50/p99/max, and stalls (late or unanswered while
    the node ran)."""
    out: dict[str, Any] = {}
    groups: dict[tuple[int, str], list[Probe]] = {}
    for p in probes:
        groups.setdefault((p.node, window.phase(p.mono)), []).append(p)
    for (node, phase), ps in sorted(groups.items()):
        answered = sorted(p.latency_s for p in ps if p.latency_s is not None)
        stalls = [p for p in ps if p.running and (p.latency_s is None or p.latency_s > STALL_S)]
        out.setdefault(str(node), {})[phase] = {
            "probes": len(ps),
            "p50_ms": _ms(percentile(answered, 50)),
            "p99_ms": _ms(percentile(answered, 99)),
            "max_ms": _ms(answered[-1] if answered else None),
            "stalls": len(stalls),
            "unanswered_while_running": sum(1 for p in ps if p.running and p.latency_s is None),
        }
    return out


def send_latency(history: History, window: Window) -> dict[str, Any]:
    """The workload's sends by phase of invocation: outcomes and ok latency."""
    by_phase: dict[str, dict[str, Any]] = {}
    lat: dict[str, list[float]] = {}
    for op in history.ops_of("send"):
        phase = window.phase(op.invoke_mono)
        row = by_phase.setdefault(phase, {"ok": 0, "fail": 0, "info": 0})
        row[op.type] += 1
        if op.type == "ok":
            lat.setdefault(phase, []).append(op.complete_mono - op.invoke_mono)
    for phase, row in by_phase.items():
        values = sorted(lat.get(phase, []))
        row["p50_ms"] = _ms(percentile(values, 50))
        row["p99_ms"] = _ms(percentile(values, 99))
        row["max_ms"] = _ms(values[-1] if values else None)
    return {p: by_phase[p] for p in ("before", "during", "after") if p in by_phase}


def log_errors(logs: dict[int, Path]) -> dict[str, Any]:
    """Error-level lines in each node's log, by message (most frequent first), and how many
    of them are CRITICAL."""
    out: dict[str, Any] = {}
    for node, path in sorted(logs.items()):
        counts: Counter[str] = Counter()
        critical = 0
        try:
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    is_critical = '"level": "critical"' in line
                    if is_critical or '"level": "error"' in line:
                        critical += is_critical
                        m = _LOG_MSG.search(line)
                        counts[m.group(1) if m else line.strip()[:120]] += 1
        except OSError:
            continue
        if counts:
            out[str(node)] = {
                "lines": sum(counts.values()),
                "critical": critical,
                "top": counts.most_common(10),
            }
    return out


def suspects(scenario_log: Path, crash: Crash, seed: int) -> dict[str, Any]:
    """The connections to the crashed node that began shortly before it died, newest first,
    and the command that replays them in their order (a replay runs them one at a time)."""
    rows: list[tuple[float, str, str]] = []
    try:
        with scenario_log.open() as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 6:
                    continue
                mono, target, number, node, _port, kind = parts
                t = float(mono)
                if crash.mono - SUSPECT_WINDOW_S <= t <= crash.mono and int(node) == crash.node:
                    rows.append((t, f"{target}:{number}", kind))
    except OSError:
        return {"connections": [], "replay": None}
    rows.sort(reverse=True)
    rows = rows[:MAX_SUSPECTS]
    specs = [spec for _, spec, _ in rows]
    return {
        "connections": [
            {"replay": spec, "kind": kind, "before_crash_s": round(crash.mono - t, 3)}
            for t, spec, kind in rows
        ],
        "replay": (
            f"raftchat fuzz --seed {seed} --replay {','.join(reversed(specs))}" if specs else None
        ),
    }


def checker_counts(verdict: Verdict) -> dict[str, Any]:
    r = verdict.results
    counts = {
        "acknowledged": r["lost_acked"].counts.get("acked"),
        "lost": r["lost_acked"].counts.get("lost"),
        "unverified": r["lost_acked"].counts.get("unverified"),
        "duplicated": r["duplicates"].counts.get("duplicated_keys"),
        "inconsistent_seqs": r["inconsistent_seq"].counts.get("inconsistent_seqs"),
    }
    for name, result in r.items():
        if not result.valid:
            counts[f"{name}.invalid"] = 1
    return counts


def server_errors(targets: dict[str, Any]) -> dict[str, int]:
    """Answers that are the server failing on bad input instead of refusing it precisely: an
    HTTP 5xx other than 503, a gRPC INTERNAL or UNKNOWN, an HTTP/2 INTERNAL_ERROR, a SENDACK
    "system error". Examples with their requests are in each target's findings."""
    out: Counter[str] = Counter()
    for stats in targets.values():
        for key, n in stats.get("answers", {}).items():
            if (key.startswith("http:5") and key != "http:503") or key in SERVER_ERROR_ANSWERS:
                out[key] += n
    return dict(out)


def judge(result: dict[str, Any]) -> list[str]:
    """Why the run fails (empty: it passed)."""
    why = []
    if result["crashes"]:
        sigs = Counter(c["signature"] for c in result["crashes"])
        why.append(f"{len(result['crashes'])} node crash(es): {dict(sigs)}")
    checks = result["checkers"]
    if not checks["valid"]:
        why.append(f"checkers failed: {', '.join(checks['failed'])}")
    if result["server_errors"]:
        why.append(f"server errors on bad input: {result['server_errors']}")
    if not result["healthy_after"]:
        why.append("the cluster was not healthy again after the fuzzing")
    if not result.get("replicas_converged", True):
        why.append("replicas never reached one applied index: their agreement was not checked")
    critical = sum(row.get("critical", 0) for row in result.get("log_errors", {}).values())
    if critical:
        why.append(f"{critical} CRITICAL log line(s): a replica diverged, or worse")
    return why


def _row(cells: Sequence[Any], widths: Sequence[int]) -> str:
    return "  ".join(
        str(c).rjust(w) if i else str(c).ljust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def render_text(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"raftchat fuzz: seed {meta['seed']}, revision {meta['revision']}, "
        f"{meta['nodes']} nodes on {meta['host_base']}.1x",
        f"  command: {meta['command']}",
        f"  fuzzing: {result['fuzz_s']:.1f} s, {result['frames_total']:,} frames "
        f"({result['frames_per_s']:,.0f}/s)",
        "",
    ]
    widths = (6, 11, 13, 11, 9, 8, 10, 8)
    lines.append(
        _row(
            ("target", "frames", "bytes", "conns", "refused", "broken", "abandoned", "errors"),
            widths,
        )
    )
    for t, s in result["targets"].items():
        lines.append(
            _row(
                (
                    t,
                    f"{s['frames']:,}",
                    f"{s['bytes']:,}",
                    f"{s['connections']:,}",
                    s["refused"],
                    s["broken"],
                    s["abandoned"],
                    s["fuzzer_errors"],
                ),
                widths,
            )
        )
    lines += ["", "nodes (RSS MiB before -> after, peak; crashes):"]
    for n, row in result["nodes"].items():

        def mib(k: int | None) -> str:
            return "-" if k is None else f"{k / 1024:.0f}"

        lines.append(
            f"  node {n}: {mib(row['rss_kib_before'])} -> {mib(row['rss_kib_after'])}, "
            f"peak {mib(row['rss_kib_peak'])}; crashes {row['crashes']}"
        )
    lines.append(f"  crashes {len(result['crashes'])}, restarts {result['restarts']}")
    for sig, n in Counter(c["signature"] for c in result["crashes"]).most_common():
        lines.append(f"    {n} x {sig}")
    if result["crashes"]:
        first = result["crashes"][0]
        if first.get("suspects", {}).get("replay"):
            lines.append(f"    first crash, replay: {first['suspects']['replay']}")
    lines += ["", "workload sends by phase (ok/info/fail, ok latency p50/p99/max ms):"]
    for phase, row in result["stalls"]["sends"].items():
        lines.append(
            f"  {phase:6}  {row['ok']}/{row['info']}/{row['fail']}  "
            f"{row['p50_ms']}/{row['p99_ms']}/{row['max_ms']}"
        )
    lines.append(f"stalls: /health probes later than {STALL_S:.0f} s or unanswered, per node:")
    for n, phases in result["stalls"]["probes"].items():
        cells = [
            f"{ph} {v['stalls']}/{v['probes']} (max {v['max_ms']} ms)" for ph, v in phases.items()
        ]
        lines.append(f"  node {n}: " + ", ".join(cells))
    c = result["checkers"]["counts"]
    lines += [
        "",
        f"checkers: acknowledged {c['acknowledged']}, lost {c['lost']}, duplicated "
        f"{c['duplicated']}, unverified {c['unverified']}, inconsistent seqs "
        f"{c['inconsistent_seqs']}; failed: {', '.join(result['checkers']['failed']) or 'none'}",
    ]
    if result["server_errors"]:
        lines.append(f"server errors: {result['server_errors']}")
    if result["log_errors"]:
        for n, row in result["log_errors"].items():
            top = "; ".join(f"{m} x{k}" for m, k in row["top"][:3])
            lines.append(f"error log lines, node {n}: {row['lines']} ({top})")
    lines.append("")
    if result["valid"]:
        lines.append("raftchat fuzz: PASS")
    else:
        lines.append("raftchat fuzz: FAIL: " + "; ".join(result["failures"]))
    return "\n".join(lines)
