"""chaos.report: the HTML report of a chaos run shows the verdict, plots with fault windows
shaded, the availability and checker tables and the nemesis timeline, escapes what comes from
the history, and stays bounded on huge histories."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pytest

from chaos.checkers import CHECKERS, SAFETY, CheckResult, Verdict, check_all
from chaos.history import (
    Event,
    MemoryHistory,
    NemesisValue,
    ReadMessage,
    ReadValue,
    SendValue,
)
from chaos.report import MAX_BUCKETS, _buckets, render_report, write_report

G1 = "2:g1"
EVIL = "2:<script>alert(1)</script>"


class FakeClock:
    def __init__(self, t: float = 500.0) -> None:
        self.t = t

    def wall(self) -> float:
        return 1_767_000_000.0 + self.t

    def mono(self) -> float:
        return self.t


class Run:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.rec = MemoryHistory(self.clock)
        self.n = 0
        self.acked: dict[str, list[ReadMessage]] = {}

    @property
    def events(self) -> list[Event]:
        return self.rec.events

    def send(
        self,
        at: float,
        outcome: Literal["ok", "fail", "info", None] = "ok",
        latency: float = 0.005,
        channel: str = G1,
        group: int | None = 1,
        seq: int | None = None,
        cmn: str | None = None,
    ) -> None:
        self.n += 1
        self.clock.t = at
        cmn = cmn if cmn is not None else f"m{self.n}"
        value = SendValue(client_msg_no=cmn, from_uid="u1", payload_hash=f"h-{cmn}", group=group)
        op = self.rec.invoke("send", f"c{self.n % 4}", value, channel=channel, node=1)
        self.clock.t = at + latency
        if outcome == "ok":
            log = self.acked.setdefault(channel, [])
            seq = len(log) + 1 if seq is None else seq
            log.append(ReadMessage(seq, 10_000 + self.n, cmn, "u1", f"h-{cmn}"))
            op.ok(message_seq=seq, message_id=10_000 + self.n, reason=1)
        elif outcome == "fail":
            op.fail(reason=3)
        elif outcome == "info":
            op.info(error="timeout")

    def final_read(self, at: float, channel: str = G1) -> None:
        self.clock.t = at
        op = self.rec.invoke("final_read", "r1", ReadValue(start_seq=1), channel=channel, node=1)
        messages = tuple(sorted(self.acked.get(channel, []), key=lambda m: m.seq))
        op.ok(messages=messages, complete=True, head=messages[-1].seq if messages else 0)

    def nemesis(
        self,
        at: float,
        fault: str,
        action: Literal["start", "stop"],
        targets: tuple[str, ...] = ("n2",),
        complete: bool = True,
        fault_id: str | None = None,
        outcome: Literal["ok", "fail"] = "ok",
    ) -> None:
        self.clock.t = at
        value = NemesisValue(fault, action, targets, fault_id)
        op = self.rec.invoke("nemesis", "nemesis", value)
        if complete:
            self.clock.t = at + 0.1
            op.complete(outcome)


def faulty_run() -> Run:
    """30 s of sends, 10/s; a partition 5..10 s (writes stall) and a kill 15..20 s."""
    r = Run()
    r.nemesis(505.0, "partition", "start", ("n1", "n2"))
    r.nemesis(509.9, "partition", "stop")
    r.nemesis(515.0, "kill", "start", ("n3",))
    r.nemesis(519.9, "kill", "stop")
    for i in range(300):
        t = 500.0 + i * 0.1
        if 505.0 <= t < 510.0:
            r.send(t, "info" if i % 2 else "fail", latency=1.0)
        else:
            r.send(t, "ok", latency=0.004 + (0.2 if 515.0 <= t < 520.0 else 0.0))
    r.events.sort(key=lambda e: e.mono)
    r.final_read(531.0)
    return r


FAULT_NUMBER = r"(?<=[>\s])#(\d+)\b"
"""A fault's number as the report shows it (colours like fill="#555" follow a quote)."""


def fault_rects(page: str) -> list[str]:
    return re.findall(r'<rect class="fault" data-fault="([^"]*)"', page)


def test_report_shows_verdict_plots_fault_windows_and_tables() -> None:
    r = faulty_run()
    verdict = check_all(r.events)
    assert verdict.valid
    meta = {
        "run": "20261122-0102-seed7",
        "nodes": 5,
        "nemesis": ["partition", "kill"],
        "seed": 7,
        "time_s": 30,
        "command": "raftchat chaos run --seed 7",
        "counts": {"sends": 300, "faults": 2},
    }
    page = render_report(r.events, verdict, meta)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<div class="verdict valid">VALID</div>' in page
    # No RECVs, digests or floor observations in this history: said so, not called valid.
    assert "7 of 10 checkers passed" in page
    assert "No data (not required)" in page and '<td class="dim">no data</td>' in page
    # Meta as a table, lists joined, nested dicts as a nested table.
    for text in ("20261122-0102-seed7", "partition, kill", "raftchat chaos run --seed 7"):
        assert text in page
    assert "<th>sends</th><td>300</td>" in page
    # Two plots (throughput, latency), each with both fault windows shaded and labelled.
    assert page.count("<svg") >= 4  # + the gap bars and the nemesis lanes
    assert fault_rects(page) == ["partition", "kill", "partition", "kill"]
    assert '<text class="flabel"' in page and ">partition</text>" in page
    assert "fault: partition" in page and "fault: kill" in page  # legend
    assert "stroke-dasharray" in page  # the info line is dashed
    # Every checker has a row.
    for name in CHECKERS:
        assert f'id="checker-{name}"' in page
    # Availability table: the partition stalled group 1 for ~5 s.
    assert "Availability per fault" in page and "group 1: " in page
    assert re.search(r"<td><b>5\.\d+ s</b></td>", page)  # worst write gap of the partition
    assert "<th>during</th>" in page
    # Nemesis timeline: a lane strip and one row per start/stop.
    assert page.count('<rect class="lane"') == 2
    assert page.count("<td><b>start</b></td>") == 2 and page.count("<td><b>stop</b></td>") == 2
    assert "2026-" in page or "2025-" in page  # wall clock of the nemesis ops


def test_invalid_verdict_lists_failures_and_escapes_the_history() -> None:
    r = faulty_run()
    evil_fault = '<img src=x onerror="alert(2)">'
    r.nemesis(532.0, evil_fault, "start", ("<b>n9</b>",))
    r.nemesis(533.0, evil_fault, "stop")
    # One message stored twice in the evil channel: duplicates flags it with the channel name.
    r.send(534.0, "ok", channel=EVIL, cmn="dup", seq=1)
    r.send(534.5, "ok", channel=EVIL, cmn="dup", seq=2)
    r.final_read(536.0, EVIL)
    verdict = check_all(r.events)
    assert not verdict.valid and "duplicates" in verdict.failed
    page = render_report(r.events, verdict, {"run": "<i>r1</i>", "note": "a & b"})
    assert '<div class="verdict invalid">INVALID</div>' in page
    assert 'Failed properties:</p><ul class="failed"><li><a href="#checker-duplicates">' in page
    assert "<script" not in page and "<img" not in page and "<b>n9</b>" not in page
    assert "<i>r1</i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    assert "&lt;i&gt;r1&lt;/i&gt;" in page and "a &amp; b" in page
    assert 'data-fault="&lt;img src=x onerror=&quot;alert(2)&quot;&gt;"' in page
    # Examples as escaped, pre-formatted JSON, open for the failed checker.
    assert re.search(r'id="checker-duplicates".*?<details open>.*?<pre>\{', page, re.S)


def test_empty_history() -> None:
    page = render_report([], check_all([]), {})
    assert "VALID" in page and "<svg" in page
    assert fault_rects(page) == []
    assert "no sends completed" in page and "no acknowledged sends" in page
    assert "No faults were injected" in page
    assert "the run had no faults" in page


def test_empty_verdict_and_a_history_without_faults() -> None:
    r = Run()
    for i in range(50):
        r.send(500.0 + i * 0.05)
    page = render_report(r.events, Verdict(valid=True, results={}), {"run": "x"})
    assert "No checker ran." in page and "availability checker did not run" in page
    assert fault_rects(page) == [] and "the run had no faults" in page
    assert '<path class="series"' in page


def test_events_without_completions() -> None:
    r = Run()
    r.send(500.0)
    r.send(500.5, None)  # never completed
    r.nemesis(501.0, "pause", "start", ("n1",))
    r.send(501.5, None)
    r.nemesis(502.0, "clock", "start", complete=False)  # never completed, never stopped
    r.send(503.0)
    page = render_report(r.events, check_all(r.events), {})
    assert "2 never completed" in page  # the send summary
    assert "never healed" in page
    assert ">never completed</td>" in page  # the clock start in the timeline
    assert fault_rects(page) == ["pause", "clock", "pause", "clock"]


def test_a_single_instant_and_a_lone_stop() -> None:
    r = Run()
    r.send(500.0, latency=0.0)
    r.nemesis(500.0, "kill", "stop")  # a stop with no start: no window, still in the timeline
    page = render_report(r.events, check_all(r.events), {})
    assert fault_rects(page) == [] and "<td><b>stop</b></td>" in page
    assert "<circle" in page  # one bucket of data is drawn as a dot


def test_long_runs_are_bucketed() -> None:
    r = Run()
    for i in range(2000):
        r.send(500.0 + i * 6.0)  # 3.3 hours
    page = render_report(r.events, check_all(r.events), {})
    assert "s buckets" in page
    for d in re.findall(r'<path class="series" d="([^"]*)"', page):
        assert d.count("L") + d.count("M") <= MAX_BUCKETS


def test_huge_history_renders_bounded() -> None:
    r = Run()
    t = 500.0
    for k in range(6):
        r.nemesis(t + 20 + k * 40, ["partition", "kill", "pause"][k % 3], "start")
        r.nemesis(t + 30 + k * 40, ["partition", "kill", "pause"][k % 3], "stop")
    for i in range(50_000):
        outcome: Literal["ok", "info"] = "info" if i % 97 == 0 else "ok"
        r.send(t + i * 0.005, outcome, latency=0.002 + (i % 50) * 0.001)
    r.events.sort(key=lambda e: e.mono)
    assert len(r.events) > 100_000
    results = {"availability": CHECKERS["availability"](r.events)}
    verdict = Verdict(valid=True, results=results)
    page = render_report(r.events, verdict, {"run": "big"})
    assert len(page.encode()) < 2_000_000
    assert len(fault_rects(page)) == 12


def test_checker_examples_are_capped_and_json_escaped() -> None:
    examples: list[dict[str, Any]] = [{"kind": "x", "n": i, "s": "</pre><b>"} for i in range(10)]
    big = CheckResult("lost_acked", False, {"lost": 10, "ratio": float("inf")}, examples)
    page = render_report([], Verdict(False, {"lost_acked": big}), {})
    assert page.count("<pre>") == 5 and "first 5 shown" in page
    assert "&lt;/pre&gt;&lt;b&gt;" in page
    assert 'class="count hot">lost=10' in page and "ratio=\u221e" in page


def test_write_report(tmp_path: Path) -> None:
    r = faulty_run()
    path = tmp_path / "report.html"
    write_report(path, r.events, check_all(r.events), {"run": "w"})
    text = path.read_text(encoding="utf-8")
    assert "<svg" in text and "VALID" in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_rates_have_no_spike_or_cliff_at_the_ends() -> None:
    b = _buckets(0.0, 600.04)  # more than MAX_BUCKETS seconds: 2 s buckets
    assert b.width == 2.0 and b.count == 300 and b.covered(299) == pytest.approx(2.04)
    assert b.rates([20] * 299 + [20])[-1] == pytest.approx(20 / 2.04)
    short = _buckets(0.0, 0.01)  # a run of 10 ms: one 1 s bucket, not a rate over 10 ms
    assert short.count == 1 and short.covered(0) == 1.0
    assert _buckets(0.0, 0.0).rates([3]) == [3.0]


def test_a_required_property_without_data_is_inconclusive_not_valid() -> None:
    r = faulty_run()
    verdict = check_all(r.events, required=SAFETY)
    assert verdict.status == "inconclusive"
    page = render_report(r.events, verdict, {"run": "r"})
    assert '<div class="verdict inconclusive">INCONCLUSIVE</div>' in page
    assert "(INCONCLUSIVE)</title>" in page
    assert re.search(r"No data for required properties.*read_floor_regression", page)
    row = re.search(r'id="checker-read_floor_regression">(.*?)</tr>', page, re.S)
    assert row and '<td class="nodata">no data</td>' in row.group(1)
    assert "VALID</div>" not in page.replace("INCONCLUSIVE</div>", "")
    unchecked = check_all(r.events, unchecked=["3 final reads kept failing"])
    page = render_report(r.events, unchecked, {})
    assert "INCONCLUSIVE" in page and "3 final reads kept failing" in page


def test_lane_labels_show_full_nemesis_names() -> None:
    r = Run()
    for i, kind in enumerate(["partition-leader", "partition-one", "partition-ring", "kill"]):
        r.nemesis(500.0 + 3 * i, kind, "start", ("1",))
        r.nemesis(501.0 + 3 * i, kind, "stop", ("1",))
    r.send(520.0)
    page = render_report(r.events, check_all(r.events), {})
    labels = re.findall(
        r'<text class="lane-label tick"[^>]*><title>[^<]*</title>([^<]*)</text>', page
    )
    assert labels == ["partition-leader", "partition-one", "partition-ring", "kill"]
    # The label column is wide enough for the longest: the bars start right of it.
    first_bar = re.search(r'<rect class="lane" x="([\d.]+)"', page)
    assert first_bar and float(first_bar.group(1)) >= 6 * len("partition-leader")
    # A hostile, absurdly long kind is shortened in the lane, whole in its tooltip.
    long_kind = "x" * 400
    r.nemesis(530.0, long_kind, "start")
    r.nemesis(531.0, long_kind, "stop")
    page = render_report(r.events, check_all(r.events), {})
    assert f"<title>{long_kind}</title>x" in page and "\u2026</text>" in page


def test_one_number_per_fault_everywhere() -> None:
    """The nemesis numbers its faults in their ids (a fault that could not start uses a number
    too); every part of the report shows that number, and no second one."""
    r = Run()
    r.nemesis(500.0, "partition-one", "start", ("1",), fault_id="partition-one-3")
    r.nemesis(502.0, "kill", "start", ("2",), fault_id="kill-4", outcome="fail")
    r.nemesis(503.0, "kill", "start", ("3",), fault_id="kill-5")
    r.nemesis(504.0, "partition-one", "stop", ("1",), fault_id="partition-one-3")
    r.nemesis(506.0, "kill", "stop", ("3",), fault_id="kill-5")
    for i in range(80):
        r.send(500.0 + i * 0.1)
    page = render_report(r.events, check_all(r.events), {})
    page = page[page.index("</style>") :]  # colours in the style sheet look like numbers
    shown = set(re.findall(FAULT_NUMBER, page))
    assert shown == {"3", "4", "5"}
    assert "(partition-one-3)" not in page and "kill-5" not in page
    assert "<td>#3</td><td><span" in page  # the timeline's number column
    assert re.search(r"#5</td>\s*<td>kill</td>", page)  # availability table
    assert "#3 partition-one 1" in page  # gap bars, tooltips
    # Without ids, faults are numbered in start order, again one number each.
    r = Run()
    r.nemesis(500.0, "pause", "start")
    r.nemesis(501.0, "kill", "start")
    r.nemesis(502.0, "pause", "stop")
    r.nemesis(503.0, "kill", "stop")
    r.send(504.0)
    page = render_report(r.events, check_all(r.events), {})
    page = page[page.index("</style>") :]
    assert set(re.findall(FAULT_NUMBER, page)) == {"1", "2"}
    assert page.count("<td>#1</td>") == 2 and page.count("<td>#2</td>") == 2  # start, stop


def test_run_facts_read_as_text_not_python() -> None:
    meta: dict[str, Any] = {
        "quick": True,
        "sabotage": None,
        "replicas_converged": False,
        "members_at_end": [1, 4, 5],
        "hosts": {"1": "127.0.0.11", "6": "127.0.0.16"},
        "load": {"users": 8, "http_fraction": 0.15, "note": None},
        "nothing": [],
    }
    page = render_report([], check_all([]), meta)
    header = page[page.index("<caption>Run</caption>") : page.index("<caption>History")]
    for python in ("True", "False", "None", "[]", "{"):
        assert python not in header
    assert "<th>quick</th><td>yes</td>" in header
    assert "<th>replicas_converged</th><td>no</td>" in header
    assert "<th>sabotage</th><td>\u2014</td>" in header
    assert "<th>note</th><td>\u2014</td>" in header
    assert "<th>members_at_end</th><td>1, 4, 5</td>" in header
    assert "<th>6</th><td>127.0.0.16</td>" in header
