"""A self-contained ``report.html`` for one chaos run: look at the run rather than read it.

What it shows, top to bottom:

1. the verdict (VALID / INVALID / INCONCLUSIVE), the failed properties, the properties that had
   no data, and the run's facts (``meta``);
2. throughput: sends acknowledged, definitely failed and indeterminate per second, with every
   fault window shaded in its kind's colour;
3. send latency (invocation to completion of acknowledged sends): p50, p99 and max per time
   bucket on a log scale, same shading;
4. availability per fault window, straight from the availability checker's table, with a bar
   chart of the longest write gap against the window's length;
5. one row per checker: valid, INVALID or no data, counts, its first examples as JSON;
6. the nemesis timeline: a lane per fault kind, and every start/stop operation with its times.

Every fault has one number everywhere (plots, availability, timeline): the one the nemesis gave
it in its id (``partition-one-7`` is #7), or its place in start order when the history's faults
carry no ids.

No dependencies and no scripts: hand-built inline SVG and one ``<style>``. Times on the x axes
are seconds since the first event, on the monotonic clock the checkers order by. Plots bucket
the history (at most :data:`MAX_BUCKETS` points a line) so a 200k-event run renders in about a
second and stays small. Everything that comes from the history or ``meta`` is HTML-escaped.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.checkers import FaultWindow, Verdict, fault_windows, send_outcome
from chaos.checkers.base import percentile
from chaos.history import Event, History, HistoryError, NemesisValue, Op

__all__ = ["MAX_BUCKETS", "render_report", "write_report"]

MAX_BUCKETS = 600
"""Most time buckets a plot line has; buckets are 1 s until the run is longer than this."""

MAX_EXAMPLES_SHOWN = 5
MAX_EXAMPLE_CHARS = 4000
MAX_TIMELINE_ROWS = 500
MAX_BAR_ROWS = 200
MAX_SCOPES_LISTED = 12
_LABEL_CHAR_W = 6.2
"""Width of one character of the 10-unit tick font, a little generous (SVG text has no wrap)."""
_BAR_LABEL_CHARS = 34
"""What fits left of the gap bars (220 units at the tick font)."""

_BUCKET_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)

_FAULT_COLORS = (
    "#f4a261",  # orange
    "#8ecae6",  # light blue
    "#cdb4db",  # lilac
    "#90be6d",  # green
    "#ffd166",  # yellow
    "#e5989b",  # rose
    "#a8dadc",  # teal
    "#b8b8b8",  # grey
    "#d4a373",  # tan
    "#ffafcc",  # pink
)

DASH = "\u2014"

_OK, _FAIL, _INFO = "#1e8e3e", "#d93025", "#e6a100"
_P50, _P99, _PMAX = "#1a73e8", "#9334e6", "#80868b"

# Plot geometry (SVG user units; the SVG scales to the page width).
_W, _H = 960, 280
_ML, _MR, _MT, _MB = 64, 16, 30, 38


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, unit: str = "", digits: int = 3) -> str:
    """A number for people: None as a dash, short otherwise."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value}{unit}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "\u221e" if value > 0 else "-\u221e"
        a = abs(value)
        if a == 0 or a >= 100:
            text = f"{value:.0f}" if a >= 100 else "0"
        elif a >= 10:
            text = f"{value:.1f}"
        elif a >= 0.01:
            text = f"{value:.{digits - 1}f}"
        else:
            text = f"{value:.2g}"
        return f"{text}{unit}"
    return _e(value) + unit


def _json_pre(value: Any, limit: int = MAX_EXAMPLE_CHARS) -> str:
    text = json.dumps(value, indent=2, default=str, ensure_ascii=False)
    if len(text) > limit:
        text = text[:limit] + f"\n\u2026 ({len(text) - limit} more characters)"
    return f"<pre>{_e(text)}</pre>"


def _wall(t: float) -> str:
    if t <= 0:
        return DASH
    try:
        moment = _dt.datetime.fromtimestamp(t, tz=_dt.UTC)
    except (OverflowError, OSError, ValueError):
        return _num(t)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


# --- what the plots are built from --------------------------------------------------------------


@dataclass(slots=True)
class _Buckets:
    t0: float
    span: float
    width: float
    count: int

    def of(self, mono: float) -> int:
        i = int((mono - self.t0) / self.width)
        return min(max(i, 0), self.count - 1)

    def covered(self, i: int) -> float:
        """The seconds bucket ``i`` spans: the last one ends with the history."""
        if i < self.count - 1:
            return self.width
        if i == 0:  # a run shorter than 1.25 buckets: no rate over less than one bucket
            return max(self.span, self.width)
        return self.span - i * self.width

    def center(self, i: int) -> float:
        return i * self.width + self.covered(i) / 2

    def rates(self, counts: Sequence[int]) -> list[float | None]:
        return [n / self.covered(i) for i, n in enumerate(counts)]


def _buckets(t0: float, span: float) -> _Buckets:
    fits = [step for step in _BUCKET_STEPS if span / step <= MAX_BUCKETS]
    width = float(fits[0]) if fits else float(math.ceil(span / MAX_BUCKETS))
    # A sliver of a bucket at the end would make a spike or a cliff of a rate: the last bucket
    # takes in any tail shorter than a quarter bucket (it spans 0.25 to 1.25 widths).
    count = max(1, math.ceil(span / width - 0.25)) if span > 0 else 1
    return _Buckets(t0, span, width, count)


@dataclass(slots=True)
class _Sends:
    ok: list[int]
    fail: list[int]
    info: list[int]
    latency_ms: list[list[float]]
    totals: Counter[str]


def _send_series(ops: Iterable[Op], b: _Buckets) -> _Sends:
    out = _Sends(
        [0] * b.count, [0] * b.count, [0] * b.count, [[] for _ in range(b.count)], Counter()
    )
    for op in ops:
        if op.completion is None:
            out.totals["unfinished"] += 1
            continue
        outcome = send_outcome(op)
        out.totals[outcome] += 1
        i = b.of(op.completion.mono)
        if outcome == "ok":
            out.ok[i] += 1
            if op.invoke is not None:
                lat = (op.completion.mono - op.invoke.mono) * 1000
                out.latency_ms[b.of(op.invoke.mono)].append(lat)
        elif outcome == "fail":
            out.fail[i] += 1
        else:
            out.info[i] += 1
    return out


class _Colors:
    """One colour per fault kind, in order of first appearance."""

    def __init__(self, kinds: Iterable[str]) -> None:
        self.map: dict[str, str] = {}
        for kind in kinds:
            if kind not in self.map:
                self.map[kind] = _FAULT_COLORS[len(self.map) % len(_FAULT_COLORS)]

    def __getitem__(self, kind: str) -> str:
        return self.map.get(kind, _FAULT_COLORS[-3])


# --- one number per fault ------------------------------------------------------------------------

_ID_NUMBER = re.compile(r"-(\d+)$")


def _id_number(fault_id: str | None) -> int | None:
    m = _ID_NUMBER.search(fault_id) if fault_id else None
    return int(m.group(1)) if m else None


def _numbers(fault_ids: Sequence[Any]) -> list[int]:
    """The number of each fault window, given their ids in start order: from the ids when
    every window has a distinct numbered one, else its place in start order."""
    from_ids = [_id_number(f) if isinstance(f, str) else None for f in fault_ids]
    numbers = [n for n in from_ids if n is not None]
    if len(numbers) == len(fault_ids) and len(set(numbers)) == len(numbers):
        return numbers
    return list(range(1, len(fault_ids) + 1))


def _window_numbers(windows: Sequence[FaultWindow]) -> list[int]:
    return _numbers([w.fault_id for w in windows])


def _op_numbers(nemesis_ops: Sequence[Op], windows: Sequence[FaultWindow]) -> dict[int, int]:
    """History index of each nemesis op -> the number of its fault, the same number
    :func:`_window_numbers` gives (a start that failed has a number only if its id has one)."""
    numbers = _window_numbers(windows)
    by_window: dict[int, int] = {}
    for w, n in zip(windows, numbers, strict=True):
        by_window[w.start_index] = n
        if w.stop_index >= 0:
            by_window[w.stop_index] = n
    ids_used = bool(windows) and numbers == [_id_number(w.fault_id) for w in windows]
    out: dict[int, int] = {}
    for op in nemesis_ops:
        v = op.value
        from_id = _id_number(v.fault_id) if isinstance(v, NemesisValue) else None
        if ids_used or not windows:
            if from_id is not None:
                out[op.index] = from_id
        elif op.index in by_window:
            out[op.index] = by_window[op.index]
    return out


def _fault_name(number: int | None, fault: str) -> str:
    return f"#{number} {fault}" if number is not None else fault


# --- SVG -----------------------------------------------------------------------------------------


def _nice_step(span: float, ticks: int) -> float:
    if span <= 0:
        return 1.0
    raw = span / ticks
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 and v == int(v):
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:.10g}" if v == int(v) else f"{v:.1f}"
    return f"{v:.3g}"


@dataclass(slots=True)
class _Series:
    name: str
    color: str
    ys: list[float | None]
    width: float = 1.6
    dash: str = ""


class _Frame:
    """The x/y mapping of one plot."""

    def __init__(
        self, x_max: float, y_lo: float, y_hi: float, log: bool, left: float = _ML
    ) -> None:
        self.x_max = x_max if x_max > 0 else 1.0
        self.log = log
        self.y_lo, self.y_hi = y_lo, y_hi
        self.left = left
        self.pw = _W - left - _MR
        self.ph = _H - _MT - _MB

    def x(self, t: float) -> float:
        return self.left + min(max(t / self.x_max, 0.0), 1.0) * self.pw

    def y(self, v: float) -> float:
        if self.log:
            v = max(v, self.y_lo)
            frac = (math.log10(v) - math.log10(self.y_lo)) / (
                math.log10(self.y_hi) - math.log10(self.y_lo)
            )
        else:
            frac = (v - self.y_lo) / (self.y_hi - self.y_lo)
        return _MT + (1 - min(max(frac, 0.0), 1.0)) * self.ph


def _svg_open(label: str, height: int = _H) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" '
        f'width="100%" role="img" aria-label="{_e(label)}">'
    )


def _fault_rects(fr: _Frame, windows: Sequence[FaultWindow], t0: float, colors: _Colors) -> str:
    parts: list[str] = []
    label_ends = [0.0, 0.0]
    numbered = zip(_window_numbers(windows), windows, strict=True)
    for n, w in sorted(numbered, key=lambda nw: nw[1].start_mono):
        x1, x2 = fr.x(w.start_mono - t0), fr.x(w.stop_mono - t0)
        width = max(x2 - x1, 1.0)
        color = colors[w.fault]
        tip = (
            f"{_fault_name(n, w.fault)} {', '.join(w.targets)}: {_num(w.start_mono - t0)}s + "
            f"{_num(w.duration_s)}s{'' if w.healed else ' (never healed)'}"
        )
        dash = "" if w.healed else ' stroke-dasharray="4 3"'
        parts.append(
            f'<rect class="fault" data-fault="{_e(w.fault)}" x="{x1:.1f}" y="{_MT}" '
            f'width="{width:.1f}" height="{fr.ph}" fill="{color}" fill-opacity="0.35" '
            f'stroke="{color}"{dash}><title>{_e(tip)}</title></rect>'
        )
        # Labels sit above the plot in two rows and may run past a narrow window, but never
        # over another label (the legend and the rect's tooltip name every window anyway).
        label = w.fault
        row = next((r for r, end in enumerate(label_ends) if x1 >= end), None)
        if row is not None:
            parts.append(
                f'<text class="flabel" x="{x1 + 1:.1f}" y="{_MT - 16 + 11 * row}">'
                f"{_e(label)}</text>"
            )
            label_ends[row] = x1 + 6.0 * len(label) + 6
    return "".join(parts)


def _axes(fr: _Frame, x_label: str, y_label: str) -> str:
    parts: list[str] = []
    step = _nice_step(fr.x_max, 10)
    t = 0.0
    while t <= fr.x_max + 1e-9:
        x = fr.x(t)
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{_MT}" x2="{x:.1f}" y2="{_MT + fr.ph}"/>'
            f'<text class="tick" x="{x:.1f}" y="{_MT + fr.ph + 14}" text-anchor="middle">'
            f"{_tick_label(t)}</text>"
        )
        t += step
    if fr.log:
        lo, hi = round(math.log10(fr.y_lo)), round(math.log10(fr.y_hi))
        every = max(1, math.ceil((hi - lo) / 8))
        ys = [10.0**d for d in range(lo, hi + 1, every)]
    else:
        ystep = _nice_step(fr.y_hi - fr.y_lo, 5)
        ys = [fr.y_lo + i * ystep for i in range(int((fr.y_hi - fr.y_lo) / ystep + 1e-9) + 1)]
    for v in ys:
        y = fr.y(v)
        parts.append(
            f'<line class="grid" x1="{fr.left}" y1="{y:.1f}" x2="{fr.left + fr.pw}" '
            f'y2="{y:.1f}"/><text class="tick" x="{fr.left - 5}" y="{y + 3:.1f}" '
            'text-anchor="end">'
            f"{_tick_label(v)}</text>"
        )
    parts.append(
        f'<rect class="frame" x="{fr.left}" y="{_MT}" width="{fr.pw}" height="{fr.ph}"/>'
        f'<text class="axis" x="{fr.left + fr.pw / 2:.1f}" y="{_H - 6}" text-anchor="middle">'
        f"{_e(x_label)}</text>"
        f'<text class="axis" transform="translate(14 {_MT + fr.ph / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{_e(y_label)}</text>'
    )
    return "".join(parts)


def _path(fr: _Frame, b: _Buckets, s: _Series) -> str:
    cmds: list[str] = []
    pen_up = True
    for i, v in enumerate(s.ys):
        if v is None:
            pen_up = True
            continue
        cmds.append(f"{'M' if pen_up else 'L'}{fr.x(b.center(i)):.1f} {fr.y(v):.1f}")
        pen_up = False
    if not cmds:
        return ""
    # A lone point (one bucket of data between gaps) would be invisible as a path: add a dot.
    dots = ""
    if len(s.ys) == 1 or sum(v is not None for v in s.ys) == 1:
        i = next(i for i, v in enumerate(s.ys) if v is not None)
        value = s.ys[i]
        assert value is not None
        dots = (
            f'<circle cx="{fr.x(b.center(i)):.1f}" cy="{fr.y(value):.1f}" r="2.5" '
            f'fill="{s.color}"/>'
        )
    dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
    return (
        f'<path class="series" d="{" ".join(cmds)}" stroke="{s.color}" '
        f'stroke-width="{s.width}"{dash}><title>{_e(s.name)}</title></path>{dots}'
    )


def _plot(
    *,
    label: str,
    series: Sequence[_Series],
    b: _Buckets,
    windows: Sequence[FaultWindow],
    colors: _Colors,
    y_label: str,
    log: bool,
    empty_text: str,
) -> str:
    values = [v for s in series for v in s.ys if v is not None]
    positive = [v for v in values if v > 0]
    if log and positive:
        y_lo = 10.0 ** math.floor(math.log10(min(positive)))
        y_hi = 10.0 ** math.ceil(math.log10(max(positive)))
        if y_hi <= y_lo:
            y_hi = y_lo * 10
    else:
        log = False
        top = max(values, default=0.0)
        top *= 1.05  # headroom: a flat line at the maximum should not sit on the frame
        step = _nice_step(top, 5) if top > 0 else 1.0
        y_lo, y_hi = 0.0, max(step * math.ceil(top / step - 1e-9), step)
    fr = _Frame(b.span, y_lo, y_hi, log)
    parts = [_svg_open(label), _fault_rects(fr, windows, b.t0, colors)]
    parts.append(_axes(fr, "seconds since the first event", y_label))
    if positive or (values and not log):
        parts.extend(_path(fr, b, s) for s in series)
    if not positive:
        parts.append(
            f'<text class="empty" x="{fr.left + fr.pw / 2:.1f}" y="{_MT + fr.ph / 2:.1f}" '
            f'text-anchor="middle">{_e(empty_text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend(series: Sequence[_Series], colors: _Colors) -> str:
    items = [
        f'<span class="li"><span class="sw line" style="border-color:{s.color}"></span>'
        f"{_e(s.name)}</span>"
        for s in series
    ]
    items += [
        f'<span class="li"><span class="sw box" style="background:{c}"></span>'
        f"fault: {_e(kind)}</span>"
        for kind, c in colors.map.items()
    ]
    return f'<div class="legend">{"".join(items)}</div>'


# --- sections ------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """A scalar for people, escaped: yes/no for booleans, a dash for None, never a repr."""
    if value is None or isinstance(value, bool | int | float):
        return _num(value)
    return _e(value)


def _meta_value(value: Any) -> str:
    if isinstance(value, Mapping):
        rows = "".join(
            f"<tr><th>{_e(k)}</th><td>{_meta_value(v)}</td></tr>" for k, v in value.items()
        )
        return f'<table class="kv inner">{rows}</table>'
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(_text(v) for v in value) if value else DASH
    return _text(value)


_STATUS_WORDS = {
    "valid": ("VALID", "valid"),
    "invalid": ("INVALID", "invalid"),
    "inconclusive": ("INCONCLUSIVE", "inconclusive"),
}


def _checker_link(name: str) -> str:
    return f'<a href="#checker-{_e(name)}"><b>{_e(name)}</b></a>'


def _header(verdict: Verdict, meta: Mapping[str, Any], facts: Mapping[str, str]) -> str:
    word, cls = _STATUS_WORDS[verdict.status]
    run = meta.get("run")
    title = f"Chaos run {_e(run)}" if run is not None else "Chaos run"
    failed = verdict.failed
    if failed:
        items = []
        for name in failed:
            r = verdict.results[name]
            nonzero = ", ".join(
                f"{k}={_num(v)}" for k, v in r.counts.items() if v not in (0, 0.0, None)
            )
            items.append(
                f"<li>{_checker_link(name)}{' ' + DASH + ' ' + _e(nonzero) if nonzero else ''}</li>"
            )
        failed_html = f'<p>Failed properties:</p><ul class="failed">{"".join(items)}</ul>'
    elif not verdict.results:
        failed_html = "<p>No checker ran.</p>"
    else:
        passed = sum(1 for r in verdict.results.values() if r.status == "valid")
        failed_html = (
            f"<p>All {passed} checkers passed.</p>"
            if passed == len(verdict.results)
            else f"<p>{passed} of {len(verdict.results)} checkers passed.</p>"
        )
    missing = verdict.missing
    if missing:
        failed_html += (
            '<p class="nodata">No data for required properties (the run cannot vouch for '
            f"them): {', '.join(_checker_link(n) for n in missing)}.</p>"
        )
    optional = [n for n in verdict.no_data if n not in missing]
    if optional:
        failed_html += (
            '<p class="dim">No data (not required): '
            f"{', '.join(_checker_link(n) for n in optional)}.</p>"
        )
    if verdict.unchecked:
        failed_html += (
            '<p class="nodata">Not everything could be looked at: '
            f"{_e('; '.join(verdict.unchecked))}.</p>"
        )
    meta_rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_meta_value(v)}</td></tr>" for k, v in meta.items()
    )
    fact_rows = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in facts.items())
    meta_table = f'<table class="kv"><caption>Run</caption>{meta_rows}</table>' if meta else ""
    return (
        f"<header><h1>{title}</h1>"
        f'<div class="verdict {cls}">{word}</div>{failed_html}'
        f'<div class="tables">{meta_table}'
        f'<table class="kv"><caption>History</caption>{fact_rows}</table></div></header>'
    )


def _availability_section(
    verdict: Verdict, windows: Sequence[FaultWindow], t0: float, colors: _Colors
) -> str:
    result = verdict.results.get("availability")
    if result is None:
        return "<p>The availability checker did not run.</p>"
    table: list[dict[str, Any]] = list(result.details.get("windows", []))
    counts = result.counts
    phases = "".join(
        f"<tr><th>{phase}</th><td>{_num(counts.get(f'ok_sends_{phase}'))}</td>"
        + "".join(
            f"<td>{_num(counts.get(f'latency_ms_{q}_{phase}'), ' ms')}</td>"
            for q in ("p50", "p99", "max")
        )
        + "</tr>"
        for phase in ("before", "during", "after")
    )
    summary = (
        '<table class="grid-table"><caption>Acknowledged-send latency by phase (sends invoked '
        "before the first fault, inside any fault window, outside every window after the first "
        "began)</caption><tr><th>phase</th><th>ok sends</th><th>p50</th><th>p99</th>"
        f"<th>max</th></tr>{phases}</table>"
    )
    totals = (
        f"<p>Fault windows: <b>{_num(counts.get('fault_windows'))}</b>, never healed: "
        f"<b>{_num(counts.get('never_healed'))}</b>, longest write gap: "
        f"<b>{_num(counts.get('max_gap_s'), ' s')}</b>, longest recovery after a heal: "
        f"<b>{_num(counts.get('max_recovery_s'), ' s')}</b>, channels/groups never recovered: "
        f"<b>{_num(counts.get('unrecovered'))}</b>.</p>"
    )
    if not table:
        return totals + "<p>No faults were injected.</p>" + summary
    rows: list[str] = []
    for n, w in zip(_numbers([w.get("fault_id") for w in table]), table, strict=True):
        lat = w.get("latency_ms", {}) or {}
        groups: dict[str, dict[str, Any]] = w.get("groups", {}) or {}
        worst: dict[str, dict[str, Any]] = w.get("worst_channels", {}) or {}
        stuck = [
            *w.get("unrecovered_channels", []),
            *(f"group {g}" for g in w.get("unrecovered_groups", [])),
        ]
        rows.append(
            "<tr>"
            f'<td><span class="sw box" style="background:{colors[str(w.get("fault"))]}"></span>'
            f"#{n}</td>"
            f"<td>{_e(w.get('fault'))}</td>"
            f"<td>{_e(', '.join(map(str, w.get('targets', []))))}</td>"
            f"<td>{_num(_rel(w.get('start_mono'), t0), ' s')}</td>"
            f"<td>{_num(w.get('duration_s'), ' s')}"
            f"{'' if w.get('healed', True) else ' <b class=bad>never healed</b>'}</td>"
            f"<td><b>{_num(w.get('longest_gap_s'), ' s')}</b></td>"
            f"<td>{_num(w.get('max_recovery_s'), ' s')}</td>"
            f"<td>{_scopes(groups, 'group ')}</td>"
            f"<td>{_scopes(worst, '')}</td>"
            f"<td>{_num(lat.get('count'))}</td>"
            f"<td>{_num(lat.get('p50'), ' ms')}</td>"
            f"<td>{_num(lat.get('p99'), ' ms')}</td>"
            f"<td>{_num(lat.get('max'), ' ms')}</td>"
            f"<td>{_e(', '.join(map(str, stuck))) if stuck else DASH}</td>"
            "</tr>"
        )
    head = (
        "<tr><th>#</th><th>fault</th><th>targets</th><th>start</th><th>duration</th>"
        '<th title="longest stretch, over every channel and slot group written during the '
        'window, with no write accepted">worst write gap</th>'
        '<th title="from the heal to the first accepted write, worst channel or group">'
        "recovery</th><th>slot groups: gap (ok/attempts), recovery</th>"
        "<th>worst channels: gap (ok/attempts), recovery</th>"
        "<th>ok sends in window</th><th>p50</th><th>p99</th><th>max</th>"
        "<th>never recovered</th></tr>"
    )
    return (
        totals
        + _gap_bars(table, colors)
        + f'<div class="scroll"><table class="grid-table">{head}{"".join(rows)}</table></div>'
        + summary
    )


def _rel(mono: Any, t0: float) -> float | None:
    return float(mono) - t0 if isinstance(mono, int | float) else None


def _scopes(scopes: Mapping[str, Mapping[str, Any]], prefix: str) -> str:
    if not scopes:
        return DASH
    ordered = sorted(scopes.items(), key=lambda kv: -float(kv[1].get("longest_gap_s") or 0))
    lines = [
        f"{_e(prefix)}{_e(name)}: {_num(st.get('longest_gap_s'), ' s')} "
        f"({_num(st.get('ok_in_window'))}/{_num(st.get('attempts_in_window'))}), "
        f"{_num(st.get('recovery_s'), ' s')}"
        + (' <b class="bad">stuck</b>' if st.get("unrecovered") else "")
        for name, st in ordered[:MAX_SCOPES_LISTED]
    ]
    if len(ordered) > MAX_SCOPES_LISTED:
        lines.append(f"\u2026 {len(ordered) - MAX_SCOPES_LISTED} more")
    return '<div class="scopes">' + "<br>".join(lines) + "</div>"


def _gap_bars(table: Sequence[Mapping[str, Any]], colors: _Colors) -> str:
    """Per fault window: a grey bar for its length, a coloured one for its worst write gap."""
    shown = table[:MAX_BAR_ROWS]
    row_h, label_w, right = 20, 220, 110
    height = 24 + row_h * len(shown)
    scale_max = max(
        (max(float(w.get("duration_s") or 0), float(w.get("longest_gap_s") or 0)) for w in shown),
        default=0.0,
    )
    scale_max = scale_max if scale_max > 0 else 1.0
    bar_w = _W - label_w - right
    parts = [_svg_open("unavailable seconds per fault window", height)]
    parts.append(
        f'<text class="axis" x="{label_w}" y="14">grey: window length, colour: longest time '
        "no write was accepted (worst channel or group)</text>"
    )
    numbers = _numbers([w.get("fault_id") for w in table])
    for row, (n, w) in enumerate(zip(numbers, shown, strict=False)):
        y = 24 + row * row_h
        dur = max(float(w.get("duration_s") or 0), 0.0)
        gap = max(float(w.get("longest_gap_s") or 0), 0.0)
        fault = str(w.get("fault"))
        targets = ", ".join(map(str, w.get("targets", [])))
        name = _fault_name(n, fault)
        # The number and kind always show in full; only a long target list is shortened
        # (the tooltip has all of it).
        room = max(_BAR_LABEL_CHARS - len(name) - 1, 0)
        shown_targets = targets if len(targets) <= room else targets[: max(room - 1, 0)] + "\u2026"
        label = f"{name} {shown_targets}".rstrip()
        parts.append(
            f'<text class="tick" x="{label_w - 6}" y="{y + 13}" text-anchor="end">'
            f"<title>{_e(f'{name} {targets}')}</title>{_e(label)}</text>"
            f'<rect class="dur" x="{label_w}" y="{y + 3}" width="{dur / scale_max * bar_w:.1f}" '
            f'height="{row_h - 6}"/>'
            f'<rect class="gap" x="{label_w}" y="{y + 6}" '
            f'width="{max(gap / scale_max * bar_w, 1):.1f}" height="{row_h - 12}" '
            f'fill="{colors[fault]}" stroke="#555" stroke-width="0.5"/>'
            f'<text class="tick" x="{label_w + bar_w + 6}" y="{y + 13}">{_num(gap)} / '
            f"{_num(dur)} s</text>"
        )
    parts.append("</svg>")
    more = (
        f"<p class=dim>{len(table) - MAX_BAR_ROWS} more windows in the table.</p>"
        if len(table) > MAX_BAR_ROWS
        else ""
    )
    return "".join(parts) + more


def _checker_section(verdict: Verdict) -> str:
    if not verdict.results:
        return "<p>No checker ran.</p>"
    rows: list[str] = []
    for name, r in verdict.results.items():
        counts = "".join(
            f'<span class="count{" hot" if not r.valid and v not in (0, 0.0, None) else ""}">'
            f"{_e(k)}={_num(v)}</span> "
            for k, v in r.counts.items()
        )
        shown = r.examples[:MAX_EXAMPLES_SHOWN]
        if shown:
            more = len(r.examples) - len(shown)
            examples = (
                f"<details{'' if r.valid else ' open'}><summary>{len(r.examples)} example"
                f"{'s' if len(r.examples) != 1 else ''}"
                f"{f', first {len(shown)} shown' if more else ''}</summary>"
                + "".join(_json_pre(ex) for ex in shown)
                + "</details>"
            )
        else:
            examples = '<span class="dim">none</span>'
        ok_cls, ok_text = _CHECK_STATUS[r.status]
        required = name in verdict.required
        if r.status == "no data" and not required:
            ok_cls = "dim"
        # Once a verdict names what it requires, say which checkers it does not.
        optional = " <span class=dim>(not required)</span>" if verdict.required else ""
        rows.append(
            f'<tr id="checker-{_e(name)}"><td><b>{_e(name)}</b>'
            f"{'' if required else optional}"
            f'</td><td class="{ok_cls}">{ok_text}</td><td class="counts">{counts}</td>'
            f"<td>{examples}</td></tr>"
        )
    return (
        '<table class="grid-table checkers"><tr><th>checker</th><th>status</th><th>counts</th>'
        f"<th>examples</th></tr>{''.join(rows)}</table>"
    )


_CHECK_STATUS = {
    "valid": ("ok", "valid"),
    "invalid": ("bad", "INVALID"),
    "no data": ("nodata", "no data"),
}


def _timeline_section(
    nemesis_ops: Sequence[Op],
    windows: Sequence[FaultWindow],
    t0: float,
    span: float,
    colors: _Colors,
) -> str:
    if not nemesis_ops:
        return "<p>No nemesis operations: the run had no faults.</p>"
    parts = [_lanes(windows, t0, span, colors)] if windows else []
    numbers = _op_numbers(nemesis_ops, windows)
    rows: list[str] = []
    for op in nemesis_ops[:MAX_TIMELINE_ROWS]:
        v = op.value
        fault, action, targets = (
            (v.fault, v.action, ", ".join(v.targets))
            if isinstance(v, NemesisValue)
            else ("?", "?", "")
        )
        done = op.completion
        number = numbers.get(op.index)
        rows.append(
            f'<tr class="{_e(action)}"><td>{f"#{number}" if number is not None else DASH}</td>'
            f'<td><span class="sw box" style="background:{colors[fault]}"></span>{_e(fault)}'
            f"</td><td><b>{_e(action)}</b></td><td>{_e(targets)}</td>"
            f"<td>{_num(op.invoke_mono - t0, ' s')}</td>"
            f"<td>{_num(done.mono - t0, ' s') if done is not None else DASH}</td>"
            f'<td class="{"ok" if op.type == "ok" else "bad"}">'
            f"{_e(op.type if done is not None else 'never completed')}</td>"
            f"<td>{_e(_wall(op.first.time))}</td><td>{_e(op.process)}</td></tr>"
        )
    more = (
        f"<p class=dim>{len(nemesis_ops) - MAX_TIMELINE_ROWS} more nemesis operations not listed."
        "</p>"
        if len(nemesis_ops) > MAX_TIMELINE_ROWS
        else ""
    )
    parts.append(
        '<div class="scroll"><table class="grid-table"><tr><th>#</th><th>fault</th>'
        "<th>action</th>"
        "<th>targets</th><th>invoked (s)</th><th>completed (s)</th><th>outcome</th>"
        f"<th>wall clock (UTC)</th><th>process</th></tr>{''.join(rows)}</table></div>{more}"
    )
    return "".join(parts)


def _lanes(windows: Sequence[FaultWindow], t0: float, span: float, colors: _Colors) -> str:
    """A Gantt strip: one lane per fault kind, a bar per window."""
    kinds = list(dict.fromkeys(w.fault for w in windows))
    lane_h = 22
    height = _MT + lane_h * len(kinds) + 24
    # The label column is as wide as the longest kind needs (every nemesis kind fits in
    # full); only a kind longer than a third of the width is shortened, its tooltip whole.
    most = int((_W / 3 - 12) / _LABEL_CHAR_W)
    longest = min(max(len(k) for k in kinds), most)
    fr = _Frame(span, 0.0, 1.0, False, left=max(_ML, 12 + _LABEL_CHAR_W * longest))
    parts = [_svg_open("fault windows per kind", height)]
    step = _nice_step(fr.x_max, 10)
    t = 0.0
    bottom = _MT + lane_h * len(kinds)
    while t <= fr.x_max + 1e-9:
        x = fr.x(t)
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{_MT}" x2="{x:.1f}" y2="{bottom}"/>'
            f'<text class="tick" x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">'
            f"{_tick_label(t)}</text>"
        )
        t += step
    for lane, kind in enumerate(kinds):
        y = _MT + lane * lane_h
        label = kind if len(kind) <= most else kind[: most - 1] + "\u2026"
        parts.append(
            f'<text class="lane-label tick" x="{fr.left - 5:.1f}" y="{y + 15}" '
            f'text-anchor="end"><title>{_e(kind)}</title>{_e(label)}</text>'
        )
    for n, w in zip(_window_numbers(windows), windows, strict=True):
        y = _MT + kinds.index(w.fault) * lane_h
        x1, x2 = fr.x(w.start_mono - t0), fr.x(w.stop_mono - t0)
        dash = "" if w.healed else ' stroke-dasharray="4 3"'
        tip = f"{_fault_name(n, w.fault)} {', '.join(w.targets)}: {_num(w.duration_s)} s"
        parts.append(
            f'<rect class="lane" x="{x1:.1f}" y="{y + 3}" width="{max(x2 - x1, 1.5):.1f}" '
            f'height="{lane_h - 6}" fill="{colors[w.fault]}" stroke="#555" stroke-width="0.6"'
            f"{dash}><title>{_e(tip)}</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:16px 24px;color:#202124;background:#fff}
h1{font-size:22px;margin:4px 0}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd}
.verdict{font-size:56px;font-weight:800;letter-spacing:2px;margin:4px 0}
.verdict.valid{color:#1e8e3e}.verdict.invalid{color:#d93025}.verdict.inconclusive{color:#b06000}
td.nodata,p.nodata{color:#b06000;font-weight:600}
ul.failed{margin:0 0 8px;color:#d93025}
.tables{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
table{border-collapse:collapse}caption{text-align:left;font-weight:600;padding:4px 0}
table.kv th{text-align:left;padding:2px 12px 2px 0;color:#5f6368;font-weight:500;
vertical-align:top}table.kv td{padding:2px 0;font-family:ui-monospace,monospace}
table.kv.inner th,table.kv.inner td{font-size:12px;padding:0 8px 0 0}
.grid-table{margin:8px 0}.grid-table th,.grid-table td{border:1px solid #ddd;padding:3px 6px;
vertical-align:top;text-align:left}.grid-table th{background:#f1f3f4;font-weight:600}
.checkers td.counts{max-width:360px}.count{display:inline-block;font-family:ui-monospace,
monospace;font-size:12px;margin-right:6px}.count.hot{color:#d93025;font-weight:700}
pre{background:#f8f9fa;border:1px solid #eee;padding:6px;margin:4px 0;font-size:12px;
max-width:640px;max-height:320px;overflow:auto;white-space:pre-wrap;word-break:break-all}
td.ok{color:#1e8e3e;font-weight:600}td.bad,.bad{color:#d93025;font-weight:700}
.dim{color:#80868b}.scroll{overflow-x:auto}.scopes{font-size:12px;white-space:nowrap}
.legend{margin:2px 0 8px;font-size:12px}.li{margin-right:14px;white-space:nowrap}
.sw{display:inline-block;vertical-align:middle;margin-right:4px}
.sw.line{width:18px;height:0;border-top:3px solid}
.sw.box{width:12px;height:12px;border:1px solid #888}
svg{display:block;max-width:100%;background:#fff}
svg .grid{stroke:#eee;stroke-width:1}svg .frame{fill:none;stroke:#9aa0a6}
svg .tick{font-size:10px;fill:#5f6368}svg .axis{font-size:11px;fill:#3c4043}
svg .flabel{font-size:10px;fill:#3c4043}svg .empty{font-size:14px;fill:#9aa0a6}
svg .series{fill:none;stroke-linejoin:round}svg .dur{fill:#e8eaed}
p.note{color:#5f6368;font-size:12px;margin:2px 0}
"""


def render_report(
    events: Sequence[Event] | History, verdict: Verdict, meta: Mapping[str, Any]
) -> str:
    """The whole report as one HTML document (no external resources, no scripts)."""
    h = History.of(events)
    notes: list[str] = []
    try:
        sends = h.ops_of("send")
        nemesis_ops = h.ops_of("nemesis")
        windows = fault_windows(h)
    except HistoryError as e:  # a malformed history still gets a report, minus its plots
        notes.append(f"The history could not be paired into operations: {e}")
        sends, nemesis_ops, windows = [], [], []
    monos = [e.mono for e in h.events]
    t0 = min(monos, default=0.0)
    span = max(max(monos, default=0.0) - t0, 0.0)
    b = _buckets(t0, span)
    s = _send_series(sends, b)
    # Kinds of windows first; a kind that only ever stopped (a stray stop) still gets a colour.
    colors = _Colors(
        [w.fault for w in windows]
        + [op.value.fault for op in nemesis_ops if isinstance(op.value, NemesisValue)]
    )

    per_s = f"per second ({b.width:g} s buckets)" if b.width > 1 else "per second"
    throughput = [
        _Series("acknowledged (ok)", _OK, b.rates(s.ok), 2.0),
        _Series("definitely failed (fail)", _FAIL, b.rates(s.fail), 1.4),
        _Series("indeterminate (info)", _INFO, b.rates(s.info), 1.4, "5 3"),
    ]
    latency = [
        _Series("p50", _P50, [percentile(sorted(v), 50) if v else None for v in s.latency_ms], 2.0),
        _Series("p99", _P99, [percentile(sorted(v), 99) if v else None for v in s.latency_ms], 1.6),
        _Series("max", _PMAX, [max(v) if v else None for v in s.latency_ms], 1.0, "2 3"),
    ]
    first_wall = min((e.time for e in h.events), default=0.0)
    facts = {
        "events": _num(len(h.events)),
        "duration": _num(span, " s"),
        "started (UTC)": _e(_wall(first_wall)),
        "sends": (
            f"{_num(sum(s.totals.values()))}: <b>{s.totals['ok']}</b> ok, "
            f"{s.totals['fail']} fail, {s.totals['info']} info, "
            f"{s.totals['unfinished']} never completed"
        ),
        "fault windows": _num(len(windows)),
    }
    body = [
        _header(verdict, meta, facts),
        *(f'<p class="bad">{_e(n)}</p>' for n in notes),
        '<nav class="dim">',
        " \u00b7 ".join(
            f'<a href="#{a}">{t}</a>'
            for a, t in (
                ("throughput", "throughput"),
                ("latency", "latency"),
                ("availability", "availability"),
                ("checkers", "checkers"),
                ("nemesis", "nemesis timeline"),
            )
        ),
        "</nav>",
        '<h2 id="throughput">Throughput</h2>',
        '<p class="note">Sends completing per second, by outcome as the checkers read it: '
        "ok = acknowledged, fail = definitely not applied, info = unknown (timeouts, retry "
        "codes). Shaded: fault windows, from the start's invocation to the heal's completion."
        "</p>",
        _legend(throughput, colors),
        _plot(
            label="sends per second",
            series=throughput,
            b=b,
            windows=windows,
            colors=colors,
            y_label=f"sends {per_s}",
            log=False,
            empty_text="no sends completed",
        ),
        '<h2 id="latency">Send latency</h2>',
        '<p class="note">Invocation to acknowledgement of ok sends, in ms, by the second the '
        f"send was invoked ({b.width:g} s buckets; log scale). Gaps: no send invoked then "
        "was acknowledged.</p>",
        _legend(latency, colors),
        _plot(
            label="send latency",
            series=latency,
            b=b,
            windows=windows,
            colors=colors,
            y_label="latency (ms)",
            log=True,
            empty_text="no acknowledged sends",
        ),
        '<h2 id="availability">Availability per fault</h2>',
        _availability_section(verdict, windows, t0, colors),
        '<h2 id="checkers">Checkers</h2>',
        _checker_section(verdict),
        '<h2 id="nemesis">Nemesis timeline</h2>',
        _timeline_section(nemesis_ops, windows, t0, span, colors),
    ]
    run = meta.get("run")
    title = f"raftchat chaos: {run} ({_STATUS_WORDS[verdict.status][0]})"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(
    path: Path, events: Sequence[Event] | History, verdict: Verdict, meta: Mapping[str, Any]
) -> None:
    """Render and write atomically (a reader never sees half a report)."""
    text = render_report(events, verdict, meta)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
