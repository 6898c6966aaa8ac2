"""What one subscriber sees over time: its push stream (P6) and its read position (P11)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from chaos.history import FloorValue, Op

from .base import CheckResult, Examples, HistoryLike, index_of, op_ref


def check_nonmonotonic_delivery(history: HistoryLike) -> CheckResult:
    """P6, Kafka ``nonmonotonic-poll`` / etcd "watch travels back in time": within one session,
    the RECV seqs of a channel strictly increase, in the order the session received them. A
    repeat is flagged as well as a step back. Skips are allowed (push is best effort and sync
    backfills), and a reconnect is a new session that may start anywhere."""
    _, ix = index_of(history)
    last: dict[tuple[str, str, str], tuple[int, Op]] = {}
    ex = Examples()
    for op, v, channel in ix.recvs:  # history order, which is receive order per session
        key = (op.process, v.session, channel)
        prev = last.get(key)
        if prev is not None and v.seq <= prev[0]:
            ex.add(
                "repeat" if v.seq == prev[0] else "backwards",
                process=op.process,
                session=v.session,
                channel=channel,
                previous_seq=prev[0],
                seq=v.seq,
                previous=op_ref(prev[1]),
                recv=op_ref(op),
            )
        if prev is None or v.seq > prev[0]:
            last[key] = (v.seq, op)
    return CheckResult(
        name="nonmonotonic_delivery",
        valid=not ex,
        counts={
            "recvs": len(ix.recvs),
            "session_channels": len(last),
            "backwards": ex.counts["backwards"],
            "repeats": ex.counts["repeat"],
        },
        examples=ex.take(),
    )


@dataclass(frozen=True, slots=True)
class _Obs:
    op: Op
    value: FloorValue
    channel: str


def check_read_floor_regression(history: HistoryLike) -> CheckResult:
    """P11, kept simple until the server's unread API lands (issue 5). Observations are ok ops
    with f ``read_floor`` or ``unread`` carrying a :class:`FloorValue` per (uid, channel).

    * No value is negative; a floor never exceeds the head it was reported with; an unread
      count never exceeds the head.
    * Real-time monotonicity: if observation A completed before observation B was invoked,
      B's floor >= A's floor and B's head >= A's head. Concurrent observations are not ordered.

    An unread count itself may go down (the user read) or up (new messages); what must not
    happen is the floor moving back, which would resurrect messages already read."""
    h, _ = index_of(history)
    per: dict[tuple[str, str], list[_Obs]] = defaultdict(list)
    for op in h.ops_of("read_floor", "unread"):
        v = op.value
        if op.type != "ok" or op.channel is None or not isinstance(v, FloorValue):
            continue
        per[(v.uid, op.channel)].append(_Obs(op, v, op.channel))
    ex = Examples()
    total = 0
    for (uid, channel), obs in per.items():
        total += len(obs)
        for o in obs:
            v = o.value
            where = {"uid": uid, "channel": channel, "observation": op_ref(o.op)}
            if any(x is not None and x < 0 for x in (v.floor, v.unread, v.head)):
                ex.add("negative", floor=v.floor, unread=v.unread, head=v.head, **where)
            if v.head is not None and v.floor is not None and v.floor > v.head:
                ex.add("floor_above_head", floor=v.floor, head=v.head, **where)
            if v.head is not None and v.unread is not None and v.unread > v.head:
                ex.add("unread_above_head", unread=v.unread, head=v.head, **where)
        _regressions(obs, "floor", uid, channel, ex)
        _regressions(obs, "head", uid, channel, ex)
    return CheckResult(
        name="read_floor_regression",
        valid=not ex,
        counts={
            "observations": total,
            "floor_regressed": ex.counts["floor_regressed"],
            "head_regressed": ex.counts["head_regressed"],
            "floor_above_head": ex.counts["floor_above_head"],
            "unread_above_head": ex.counts["unread_above_head"],
            "negative": ex.counts["negative"],
        },
        examples=ex.take(),
    )


def _regressions(obs: list[_Obs], attr: str, uid: str, channel: str, ex: Examples) -> None:
    """Sweep in invoke order, folding in observations as they complete: each one is compared
    with the highest value any observation completed strictly before it began."""
    with_value = [(o, getattr(o.value, attr)) for o in obs if getattr(o.value, attr) is not None]
    by_invoke = sorted(with_value, key=lambda p: p[0].op.invoke_mono)
    by_complete = sorted(with_value, key=lambda p: p[0].op.complete_mono)
    best: tuple[int, _Obs] | None = None
    i = 0
    for o, value in by_invoke:
        while i < len(by_complete) and by_complete[i][0].op.complete_mono < o.op.invoke_mono:
            done, done_value = by_complete[i]
            if best is None or done_value > best[0]:
                best = (done_value, done)
            i += 1
        if best is not None and value < best[0]:
            ex.add(
                f"{attr}_regressed",
                uid=uid,
                channel=channel,
                earlier=best[0],
                later=value,
                earlier_observation=op_ref(best[1].op),
                observation=op_ref(o.op),
            )
