"""Properties of the stored message log of each channel (anchors 2.4, P1 P3 P4 P5 P7 P8).

The log is seen three ways: SENDACKs (the seq the leader assigned), reads (``/channel/messagesync``
pages, ``final_read`` once faults have healed) and RECVs pushed to sessions. Each checker states
what all of them must agree on. ``info`` sends are "maybe": they may be absent, but if present
they obey the same one-key-one-seq and one-seq-one-message rules as everything else.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from typing import Any

from .base import (
    CheckResult,
    Examples,
    HistoryLike,
    Observation,
    Read,
    Send,
    SendKey,
    index_of,
    op_ref,
)


def _acks(sends: list[Send]) -> dict[SendKey, list[Send]]:
    out: dict[SendKey, list[Send]] = defaultdict(list)
    for s in sends:
        if s.outcome == "ok":
            out[s.key].append(s)
    return out


def check_lost_acked(history: HistoryLike) -> CheckResult:
    """P1, Jepsen "lost write": every acknowledged send must be in every final read of its
    channel that covers its seq, under the same (from_uid, client_msg_no) and at the acked seq.

    An acked message no final read covers is ``unverified`` and makes the result invalid: the
    runner must final-read every channel that took writes, and "could not look" is not "fine".
    """
    _, ix = index_of(history)
    finals: dict[str, list[Read]] = defaultdict(list)
    for r in ix.reads:
        if r.final:
            finals[r.channel].append(r)
    ex = Examples()
    acked = lost = 0
    for key, acks in _acks(ix.sends).items():
        channel, from_uid, cmn = key
        seqs = {a.value.message_seq for a in acks}
        acked += 1
        message_lost = False
        verified = False
        for seq in sorted(seqs, key=lambda s: -1 if s is None else s):
            # An ack without a seq (an old HTTP answer) can still be looked for by key.
            covering = [r for r in finals.get(channel, []) if r.value.covers(seq or 1)]
            verified = verified or bool(covering)
            for r in covering:
                found = r.by_key.get((from_uid, cmn), set())
                if seq is None and found:
                    continue
                if seq in found:
                    continue
                message_lost = True
                ex.add(
                    "moved" if found else "missing",
                    channel=channel,
                    from_uid=from_uid,
                    client_msg_no=cmn,
                    acked_seq=seq,
                    found_at=sorted(found),
                    final_read=op_ref(r.op),
                    final_read_last_seq=max((m.seq for m in r.value.messages), default=0),
                    ack=op_ref(acks[0].op),
                )
        if message_lost:
            lost += 1
        elif not verified:
            ex.add(
                "unverified",
                channel=channel,
                from_uid=from_uid,
                client_msg_no=cmn,
                acked_seq=sorted(s for s in seqs if s is not None),
                ack=op_ref(acks[0].op),
                why="no ok final_read of this channel covers the acked seq",
            )
    unverified = ex.counts["unverified"]
    return CheckResult(
        name="lost_acked",
        valid=lost == 0 and unverified == 0,
        counts={
            "acked": acked,
            "lost": lost,
            "lost_observations": ex.counts["missing"] + ex.counts["moved"],
            "unverified": unverified,
            "final_reads": sum(len(v) for v in finals.values()),
        },
        examples=ex.take(),
        no_data=acked == 0,
    )


def _seen(obs: list[Observation]) -> list[dict[str, Any]]:
    return [o.ref() for o in obs[:3]]


def check_duplicates(history: HistoryLike) -> CheckResult:
    """P3, Kafka ``:duplicate``: one (channel, from_uid, client_msg_no) under one seq, whoever
    looks: acks of every retry, reads, RECVs. A retry must return the original seq."""
    _, ix = index_of(history)
    by_key: dict[SendKey, dict[int, list[Observation]]] = defaultdict(lambda: defaultdict(list))
    for o in ix.observations:
        by_key[o.key][o.seq].append(o)
    ex = Examples()
    extra = 0
    for key, seqs in by_key.items():
        if len(seqs) < 2:
            continue
        extra += len(seqs) - 1
        ack_seqs = {seq for seq, obs in seqs.items() if any(o.source == "ack" for o in obs)}
        ex.add(
            # Two acks disagreeing means the dedupe record itself failed a retry.
            "acks_disagree" if len(ack_seqs) > 1 else "stored_twice",
            channel=key[0],
            from_uid=key[1],
            client_msg_no=key[2],
            seqs={str(seq): _seen(obs) for seq, obs in sorted(seqs.items())},
        )
    duplicated = ex.counts["acks_disagree"] + ex.counts["stored_twice"]
    return CheckResult(
        name="duplicates",
        valid=duplicated == 0,
        counts={
            "keys_observed": len(by_key),
            "duplicated_keys": duplicated,
            "acks_disagree": ex.counts["acks_disagree"],
            "extra_seqs": extra,
        },
        examples=ex.take(),
        no_data=not by_key,
    )


def check_inconsistent_seq(history: HistoryLike) -> CheckResult:
    """P4/P9, Kafka ``:inconsistent-offsets``: every observer of (channel, seq) sees the same
    message (id, sender, client_msg_no, payload hash); and a message id names one (channel, seq).
    Fields an observer could not see (a RECV without payload hash) are not compared."""
    _, ix = index_of(history)
    by_seq: dict[tuple[str, int], list[Observation]] = defaultdict(list)
    ids: dict[int, dict[tuple[str, int], list[Observation]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for o in ix.observations:
        by_seq[(o.channel, o.seq)].append(o)
        if o.message_id is not None:
            ids[o.message_id][(o.channel, o.seq)].append(o)
    ex = Examples()
    for (channel, seq), obs in by_seq.items():
        differing = [
            name
            for name, get in _FIELDS
            if len({v for v in (get(o) for o in obs) if v is not None}) > 1
        ]
        if not differing:
            continue
        variants: dict[tuple[Any, ...], list[Observation]] = defaultdict(list)
        for o in obs:
            variants[(o.message_id, o.from_uid, o.client_msg_no, o.payload_hash)].append(o)
        ex.add(
            "seq_disagrees",
            channel=channel,
            seq=seq,
            fields=differing,
            variants=[
                {
                    "message_id": v[0],
                    "from_uid": v[1],
                    "client_msg_no": v[2],
                    "payload_hash": v[3],
                    "observers": len(vobs),
                    "seen_by": _seen(vobs),
                }
                for v, vobs in list(variants.items())[:4]
            ],
        )
    for message_id, places in ids.items():
        if len(places) > 1:
            ex.add(
                "message_id_reused",
                message_id=message_id,
                places=[
                    {"channel": c, "seq": s, "seen_by": _seen(o)}
                    for (c, s), o in list(places.items())[:4]
                ],
            )
    return CheckResult(
        name="inconsistent_seq",
        valid=not ex,
        counts={
            "seqs_observed": len(by_seq),
            "inconsistent_seqs": ex.counts["seq_disagrees"],
            "message_ids_reused": ex.counts["message_id_reused"],
        },
        examples=ex.take(),
        no_data=not by_seq,
    )


_FIELDS: tuple[tuple[str, Any], ...] = (
    ("message_id", lambda o: o.message_id),
    ("sender", lambda o: (o.from_uid, o.client_msg_no)),
    ("payload_hash", lambda o: o.payload_hash),
)


def check_log_gaps(history: HistoryLike) -> CheckResult:
    """P5, ``int-poll-skip`` / ``nonmonotonic``: a read returns strictly ascending, contiguous
    seqs starting at the seq it asked for; a complete final read from seq 1 is exactly 1..N;
    a complete read that reports the head ends at it. Holds for every ok read, not only final
    ones: a sync that skips a seq is how a client silently loses a message."""
    _, ix = index_of(history)
    ex = Examples()
    missing_total = 0
    bad_reads = 0
    for r in ix.reads:
        v = r.value
        seqs = [m.seq for m in v.messages]
        where = {"channel": r.channel, "read": op_ref(r.op), "start_seq": v.start_seq}
        before = sum(ex.counts.values())
        if seqs and seqs[0] > v.first_seq:
            missing_total += seqs[0] - v.first_seq
            ex.add("missing_prefix", missing=_span(v.first_seq, seqs[0] - 1), **where)
        if seqs and seqs[0] < v.first_seq:
            ex.add("before_start", first_seq=seqs[0], **where)
        for a, b in itertools.pairwise(seqs):
            if b == a:
                ex.add("repeat", seq=a, **where)
            elif b < a:
                ex.add("out_of_order", after=a, seq=b, **where)
            elif b > a + 1:
                missing_total += b - a - 1
                ex.add("gap", after=a, next=b, missing=_span(a + 1, b - 1), **where)
        if v.complete and v.head is not None:
            expected_last = (
                v.head if v.end_seq is None or v.end_seq <= 0 else min(v.head, v.end_seq)
            )
            last = seqs[-1] if seqs else v.first_seq - 1
            if expected_last >= v.first_seq and last != expected_last:
                if last < expected_last:
                    missing_total += expected_last - last
                ex.add("head_mismatch", head=v.head, last_seq=last, **where)
        if sum(ex.counts.values()) > before:
            bad_reads += 1
    return CheckResult(
        name="log_gaps",
        valid=not ex,
        counts={
            "reads_checked": len(ix.reads),
            "final_reads_checked": sum(1 for r in ix.reads if r.final),
            "reads_with_anomalies": bad_reads,
            "missing_seqs": missing_total,
            **{k: ex.counts[k] for k in _GAP_KINDS},
        },
        examples=ex.take(),
        no_data=not ix.reads,
    )


_GAP_KINDS = ("gap", "missing_prefix", "before_start", "repeat", "out_of_order", "head_mismatch")


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


def check_aborted_read(history: HistoryLike, *, allow_unknown: bool = False) -> CheckResult:
    """P7, Jepsen G1a: a message every attempt of which failed definitively is never read or
    delivered. The unit is the dedupe key, not the attempt: a retry refused for permissions
    after an earlier attempt timed out may legitimately find the first attempt committed.

    Also flags ``never_sent``: a read or RECV of a (channel, from_uid, client_msg_no) no send
    in the history ever used (a phantom or corrupted message); pass ``allow_unknown`` when the
    channels carry messages the workload did not write."""
    _, ix = index_of(history)
    failed = {k for k, outs in ix.outcomes.items() if outs == {"fail"}}
    fail_op = {s.key: s for s in ix.sends if s.key in failed}
    ex = Examples()
    aborted: set[SendKey] = set()
    observed = 0
    checked = 0
    unknown: set[SendKey] = set()
    for o in ix.observations:
        if o.source == "ack":
            continue
        checked += 1
        if o.key in failed:
            observed += 1
            aborted.add(o.key)
            s = fail_op[o.key]
            ex.add(
                "failed_send_visible",
                channel=o.channel,
                from_uid=o.from_uid,
                client_msg_no=o.client_msg_no,
                seq=o.seq,
                seen_by=o.ref(),
                failed_send=op_ref(s.op),
                reason=s.value.reason,
                error=s.value.error,
            )
        elif not allow_unknown and o.key not in ix.outcomes:
            unknown.add(o.key)
            ex.add(
                "never_sent",
                channel=o.channel,
                from_uid=o.from_uid,
                client_msg_no=o.client_msg_no,
                seq=o.seq,
                seen_by=o.ref(),
            )
    return CheckResult(
        name="aborted_read",
        valid=not aborted and not unknown,
        counts={
            "definitely_failed": len(failed),
            "aborted": len(aborted),
            "aborted_observations": observed,
            "never_sent": len(unknown),
            "observations_checked": checked,
        },
        examples=ex.take(),
        no_data=checked == 0,
    )


def check_stale_read(history: HistoryLike) -> CheckResult:
    """P8, "reads see acknowledged writes". Precisely: let s be an ok send of channel c acked at
    seq k, its SENDACK received at monotonic time t_ack. Every ok read or final_read r of c
    *invoked* after t_ack whose range covers k (``ReadValue.covers``: from its start seq to the
    end it asked for if it paged to completion, else to the last seq it returned) must return
    s's (from_uid, client_msg_no). Reads concurrent with the send may or may not see it.

    Reads only vouch for what they cover, so an incremental reader that stops after one page is
    never blamed for what lies beyond it."""
    _, ix = index_of(history)
    # Per channel: acks sorted by seq, and by ack time with the running max seq, so each read
    # only walks the acks that can bind it (total work ~ size of the reads).
    by_seq: dict[str, list[tuple[int, float, Send]]] = defaultdict(list)
    for s in ix.sends:
        if s.outcome == "ok" and s.value.message_seq is not None:
            by_seq[s.channel].append((s.value.message_seq, s.op.complete_mono, s))
    prefix_max: dict[str, tuple[list[float], list[int]]] = {}
    for channel, channel_acks in by_seq.items():
        channel_acks.sort(key=lambda a: (a[0], a[1]))
        times: list[float] = []
        maxes: list[int] = []
        top = 0
        for seq, t, _ in sorted(channel_acks, key=lambda a: a[1]):
            top = max(top, seq)
            times.append(t)
            maxes.append(top)
        prefix_max[channel] = (times, maxes)
    ex = Examples()
    checked = 0
    stale_reads = 0
    for r in ix.reads:
        acks = by_seq.get(r.channel)
        if not acks:
            continue
        t_read = r.op.invoke_mono
        times, maxes = prefix_max[r.channel]
        n = bisect.bisect_left(times, t_read)
        if n == 0:
            continue
        hi = min(maxes[n - 1], r.value.covered_to())
        lo = r.value.first_seq
        start = bisect.bisect_left(acks, lo, key=lambda a: a[0])
        stale = False
        for seq, t_ack, s in acks[start:]:
            if seq > hi:
                break
            if t_ack >= t_read:
                continue
            checked += 1
            found = r.by_key.get((s.value.from_uid, s.value.client_msg_no), set())
            if seq in found:
                continue
            stale = True
            ex.add(
                "missed_acked",
                channel=r.channel,
                seq=seq,
                from_uid=s.value.from_uid,
                client_msg_no=s.value.client_msg_no,
                found_at=sorted(found),
                read=op_ref(r.op),
                read_last_seq=max((m.seq for m in r.value.messages), default=0),
                ack=op_ref(s.op),
                acked_before_read_s=round(t_read - t_ack, 6),
            )
        stale_reads += stale
    return CheckResult(
        name="stale_read",
        valid=not ex,
        counts={
            "reads": len(ix.reads),
            "acked_in_range_checked": checked,
            "stale_reads": stale_reads,
            "missed_messages": ex.counts["missed_acked"],
        },
        examples=ex.take(),
        no_data=checked == 0,
    )
