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
        no_data=not ix.recvs,
    )


@dataclass(frozen=True, slots=True)
class _Obs:
    op: Op
    value: FloorValue
    channel: str


@dataclass(frozen=True, slots=True)
class _Bound:
    """The floor is at least ``floor`` once ``op`` has completed."""

    floor: int
    source: str
    """"clear_unread" or "own_send"."""
    op: Op


_Key = tuple[str, str]
"""(uid, channel)."""


def check_read_floor_regression(history: HistoryLike) -> CheckResult:
    """P11: read floors and unread counts, exactly as the server promises them
    (``docs/messaging.md``): the floor never moves back, one's own messages are never unread,
    and unread counts only messages after the floor, up to the head.

    Observations are ok ops with f ``read_floor`` or ``unread`` (a :class:`FloorValue` per
    (uid, channel): floor, unread, head as one ``/conversation/sync`` row reported them).
    Failed and unfinished observations say nothing and are skipped. Per observation:

    * no value is negative; the floor is at most the head;
    * unread is at most head - floor (head alone when the floor is not reported): unread is
      countable messages above the floor. This bound assumes nobody used ``setUnread``, whose
      override may exceed it (the chaos workload never does);

    and in real time, per (uid, channel), comparing B only with what *completed* before B was
    invoked (concurrent operations are not ordered):

    * B's floor is at least every earlier observed floor, every floor an ``ok``
      ``clear_unread`` asked for (its ``floor``), and every seq the user's own acknowledged
      sends in that channel got (the server marks one's own messages read);
    * B's head is at least every earlier observed head.

    An unread count may go up (new messages) as well as down (the user read), so it is not
    compared over time. With no observation at all the result is "no data"."""
    h, ix = index_of(history)
    per: dict[_Key, list[_Obs]] = defaultdict(list)
    for op in h.ops_of("read_floor", "unread"):
        v = op.value
        if op.type != "ok" or op.channel is None or not isinstance(v, FloorValue):
            continue
        per[(v.uid, op.channel)].append(_Obs(op, v, op.channel))
    bounds: dict[_Key, list[_Bound]] = defaultdict(list)
    for op in h.ops_of("clear_unread"):
        v = op.value
        if op.type != "ok" or op.channel is None or not isinstance(v, FloorValue):
            continue  # a clear that failed or may not have happened promises nothing
        if v.floor is not None:
            bounds[(v.uid, op.channel)].append(_Bound(v.floor, "clear_unread", op))
    for s in ix.sends:
        if s.outcome == "ok" and s.value.message_seq is not None:
            bounds[(s.value.from_uid, s.channel)].append(
                _Bound(s.value.message_seq, "own_send", s.op)
            )
    ex = Examples()
    total = bounds_used = 0
    for (uid, channel), obs in per.items():
        total += len(obs)
        lower = bounds.get((uid, channel), [])
        bounds_used += len(lower)
        for o in obs:
            v = o.value
            where = {"uid": uid, "channel": channel, "observation": op_ref(o.op)}
            if any(x is not None and x < 0 for x in (v.floor, v.unread, v.head)):
                ex.add("negative", floor=v.floor, unread=v.unread, head=v.head, **where)
            if v.head is not None and v.floor is not None and v.floor > v.head:
                ex.add("floor_above_head", floor=v.floor, head=v.head, **where)
            if v.head is not None and v.unread is not None:
                span = v.head - (v.floor or 0)
                if v.unread > span:
                    ex.add(
                        "unread_above_head",
                        unread=v.unread,
                        floor=v.floor,
                        head=v.head,
                        most=span,
                        **where,
                    )
        earlier = [(o.op.complete_mono, o.value.floor, "observed", o.op) for o in obs]
        earlier += [(b.op.complete_mono, b.floor, b.source, b.op) for b in lower]
        _regressions(obs, "floor", earlier, uid, channel, ex)
        heads = [(o.op.complete_mono, o.value.head, "observed", o.op) for o in obs]
        _regressions(obs, "head", heads, uid, channel, ex)
    return CheckResult(
        name="read_floor_regression",
        valid=not ex,
        counts={
            "observations": total,
            "user_channels": len(per),
            "floor_lower_bounds": bounds_used,
            "floor_regressed": ex.counts["floor_regressed"],
            "head_regressed": ex.counts["head_regressed"],
            "floor_above_head": ex.counts["floor_above_head"],
            "unread_above_head": ex.counts["unread_above_head"],
            "negative": ex.counts["negative"],
        },
        examples=ex.take(),
        no_data=total == 0,
    )


def _regressions(
    obs: list[_Obs],
    attr: str,
    earlier: list[tuple[float, int | None, str, Op]],
    uid: str,
    channel: str,
    ex: Examples,
) -> None:
    """Sweep the observations in invoke order, folding in ``earlier`` facts (completion time,
    value, source, op) as they complete: each observation is compared with the highest value
    of anything that completed strictly before it began."""
    checked = sorted(
        ((o, getattr(o.value, attr)) for o in obs if getattr(o.value, attr) is not None),
        key=lambda p: p[0].op.invoke_mono,
    )
    facts = sorted((f for f in earlier if f[1] is not None), key=lambda f: f[0])
    best: tuple[int, str, Op] | None = None
    i = 0
    for o, value in checked:
        while i < len(facts) and facts[i][0] < o.op.invoke_mono:
            _, done_value, source, done_op = facts[i]
            assert done_value is not None
            if best is None or done_value > best[0]:
                best = (done_value, source, done_op)
            i += 1
        if best is not None and value < best[0]:
            ex.add(
                f"{attr}_regressed",
                uid=uid,
                channel=channel,
                earlier=best[0],
                later=value,
                earlier_source=best[1],
                earlier_observation=op_ref(best[2]),
                observation=op_ref(o.op),
            )
