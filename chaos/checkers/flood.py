"""The checkers of a ``flood`` run, over its compact history (:mod:`chaos.floodlog`).

Same properties, same names and same reading of ``info`` ("maybe happened") as the checkers of
the JSON history, computed over columns so that a million messages read back from five nodes
are checked in about a minute and a few hundred MB:

- ``lost_acked``: every acknowledged message is in every final read of its channel, at its
  acked seq (elsewhere: ``moved``; nowhere: ``missing``); an acked message of a channel no
  complete final read covers is ``unverified`` and fails the run too;
- ``duplicates``: a key (sender, ``client_msg_no``) is stored under one seq only, and every ack
  of one key (retries, deliberate resends) names the same seq and message id;
- ``inconsistent_seq``: the ack's message id is the one stored at its seq; a payload is the
  one its sender sent; a message id is stored once; a sampled RECV holds the message the log
  has at its seq; two final reads of one channel never hold different messages at one seq;
- ``log_gaps``: every final read is complete and exactly seqs 1..N, in order;
- ``aborted_read``: nothing stored was definitely refused, and nothing stored has a name the
  flood never sent (or sits in a channel its sender never wrote to);
- ``nonmonotonic_delivery``: per session and channel, RECV seqs only go up (counted by the load
  workers as RECVs arrive: every RECV, not a sample);
- ``replica_divergence``: the digests of the JSON history, by :func:`check_replica_divergence`.

Identical final reads of one channel (the usual case: every node returns the same log) are
compared once, by column equality, and checked once; the counts still say how many reads and
messages were read.
"""

from __future__ import annotations

import itertools
import json
from array import array
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import percentiles
from chaos.floodlog import (
    FAIL,
    INFO,
    OK,
    PHANTOM,
    Attempt,
    FinalRead,
    read_attempts,
    read_final_reads,
    split_key,
)

from . import Verdict
from .base import CheckResult, Examples, HistoryLike
from .replicas import check_replica_divergence

FLOOD_SAFETY: tuple[str, ...] = (
    "lost_acked",
    "duplicates",
    "inconsistent_seq",
    "log_gaps",
    "aborted_read",
    "nonmonotonic_delivery",
    "replica_divergence",
)
"""What a flood run checks, and so must have data for. ``stale_read`` and
``read_floor_regression`` are not checked (no reads during the run, no conversation lists)."""

_BIT = {OK: 1, FAIL: 2, INFO: 4}


def _name(key: int) -> dict[str, Any]:
    sender, number = split_key(key)
    return {"from_uid": f"fl{sender}", "client_msg_no": f"fl{sender}-{number}"}


@dataclass
class SendTable:
    """Every message's outcome over all its attempts, keyed by ``sender << 32 | number``."""

    outcomes: dict[int, int] = field(default_factory=dict)
    """Key -> outcome bits (1 ok, 2 fail, 4 info) | channel << 8."""
    acked: dict[int, int] = field(default_factory=dict)
    """Key -> the seq of its first ack."""
    ack_id: dict[int, int] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "fail": 0, "info": 0})
    repeat_acks: int = 0
    """Acks of a key already acked (a retry after an unknown outcome, or a deliberate resend)."""
    disagree: Examples = field(default_factory=Examples)
    latency_ms: array[float] = field(default_factory=lambda: array("d"))
    ack_times: array[float] = field(default_factory=lambda: array("d"))
    first_send: float = float("inf")

    def add(self, a: Attempt) -> None:
        key = a.key
        self.attempts[("ok", "fail", "info")[a.outcome]] += 1
        self.first_send = min(self.first_send, a.t_send)
        bits = self.outcomes.get(key, a.channel << 8)
        self.outcomes[key] = bits | _BIT[a.outcome]
        if a.outcome != OK:
            return
        self.latency_ms.append((a.t_done - a.t_send) * 1000.0)
        self.ack_times.append(a.t_done)
        if key not in self.acked:
            self.acked[key] = a.seq
            self.ack_id[key] = a.message_id
            return
        self.repeat_acks += 1
        if (a.seq, a.message_id) != (self.acked[key], self.ack_id[key]):
            self.disagree.add(
                "acks_disagree",
                channel=a.channel,
                **_name(key),
                first_ack={"seq": self.acked[key], "message_id": self.ack_id[key]},
                later_ack={"seq": a.seq, "message_id": a.message_id, "attempt": a.attempt},
            )

    def channel_of(self, key: int) -> int:
        return self.outcomes[key] >> 8

    def load(self) -> dict[str, Any]:
        """Throughput and ack latency of the run, from the attempts."""
        n = len(self.latency_ms)
        span = (max(self.ack_times) - self.first_send) if n else 0.0
        return {
            "messages": len(self.outcomes),
            "acked_messages": len(self.acked),
            "attempts": dict(self.attempts),
            "repeat_acks": self.repeat_acks,
            "acked_per_s": round(len(self.acked) / span, 1) if span > 0 else None,
            "ack_ms": percentiles(self.latency_ms),
        }


def tabulate(attempts: Iterable[Attempt]) -> SendTable:
    table = SendTable()
    for a in attempts:
        table.add(a)
    return table


@dataclass
class RecvSummary:
    """What one load worker saw of RECVs (``recv-w<worker>.json``)."""

    recvs: int = 0
    regressions: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    sample: list[list[int]] = field(default_factory=list)
    """[channel, seq, key, message_id] of every ``recv_sample``-th RECV."""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RecvSummary:
        counts = d.get("counts", {})
        return cls(
            recvs=int(counts.get("recvs", 0)),
            regressions=int(counts.get("recv_regressions", 0)),
            examples=list(d.get("recv_examples", [])),
            sample=[list(map(int, row)) for row in d.get("recv_sample", [])],
        )


@dataclass
class _Channel:
    """The distinct final reads of one channel and the nodes that returned each."""

    reads: list[tuple[FinalRead, list[int]]] = field(default_factory=list)


def check_flood(
    table: SendTable,
    reads: Iterable[FinalRead],
    recvs: Sequence[RecvSummary] = (),
) -> dict[str, CheckResult]:
    """Every flood property but replica agreement (which needs the digests)."""
    gaps, incons = Examples(), Examples()
    channels: dict[int, _Channel] = defaultdict(_Channel)
    n_reads = n_messages = incomplete = 0
    for read in reads:
        n_reads += 1
        n_messages += len(read)
        _check_order(read, gaps)
        if not read.complete:
            incomplete += 1
            gaps.add("incomplete", node=read.node, channel=read.channel, last_seq=_last(read))
        ch = channels[read.channel]
        for known, nodes in ch.reads:
            if known.same_log(read):
                nodes.append(read.node)
                break
        else:
            if ch.reads:
                _compare(ch.reads[0][0], ch.reads[0][1][0], read, incons)
            ch.reads.append((read, [read.node]))

    lost, dups, aborted = Examples(), Examples(), Examples()
    lost_keys: set[int] = set()
    acks_by_channel: dict[int, list[int]] = defaultdict(list)
    for key in table.acked:
        acks_by_channel[table.channel_of(key)].append(key)
    all_ids: array[int] = array("q")
    failed_keys = sum(1 for o in table.outcomes.values() if o & 0xFF == _BIT[FAIL])
    stored_checked = 0
    for c, ch in sorted(channels.items()):
        for i, (read, nodes) in enumerate(ch.reads):
            if i == 0:
                all_ids.extend(read.message_id)
            where = {"channel": c, "nodes": nodes}
            at = _positions(read, dups, where)
            stored_checked += len(read)
            _check_stored(table, read, c, aborted, incons, where)
            if not read.complete:
                continue
            for key in acks_by_channel.get(c, ()):
                seq = table.acked[key]
                found = at.get(key)
                if found == seq:
                    stored_id = read.message_id[_index(read, seq)]
                    if stored_id != table.ack_id[key]:
                        incons.add(
                            "ack_id_differs",
                            seq=seq,
                            acked_id=table.ack_id[key],
                            stored_id=stored_id,
                            **_name(key),
                            **where,
                        )
                    continue
                lost_keys.add(key)
                lost.add(
                    "moved" if found is not None else "missing",
                    acked_seq=seq,
                    found_at=found,
                    read_last_seq=_last(read),
                    **_name(key),
                    **where,
                )
    verified = {c for c, ch in channels.items() if any(r.complete for r, _ in ch.reads)}
    for key in table.acked:
        c = table.channel_of(key)
        if c not in verified:
            lost.add("unverified", channel=c, acked_seq=table.acked[key], **_name(key))
    reused = _reused_ids(all_ids)
    for mid in reused[:10]:
        incons.add("message_id_reused", message_id=mid)
    recv_total = sum(r.recvs for r in recvs)
    sampled = _check_recv_sample(table, channels, recvs, incons, aborted)
    unverified = lost.counts["unverified"]
    dup_kinds = dups.counts["stored_twice"] + table.disagree.counts["acks_disagree"]
    for ex in table.disagree.take():  # examples only: the count is the table's
        dups.add(ex["kind"], **{k: v for k, v in ex.items() if k != "kind"})
    results = {
        "lost_acked": CheckResult(
            name="lost_acked",
            valid=not lost_keys and unverified == 0,
            counts={
                "acked": len(table.acked),
                "lost": len(lost_keys),
                "lost_observations": lost.counts["missing"] + lost.counts["moved"],
                "unverified": unverified,
                "final_reads": n_reads,
                "final_read_messages": n_messages,
            },
            examples=lost.take(),
            no_data=not table.acked,
        ),
        "duplicates": CheckResult(
            name="duplicates",
            valid=dup_kinds == 0,
            counts={
                "keys_stored": len(table.outcomes),
                "stored_twice": dups.counts["stored_twice"],
                "acks_disagree": table.disagree.counts["acks_disagree"],
                "repeat_acks_checked": table.repeat_acks,
                "stored_messages_checked": stored_checked,
            },
            examples=dups.take(),
            no_data=stored_checked == 0,
        ),
        "inconsistent_seq": CheckResult(
            name="inconsistent_seq",
            valid=not incons,
            counts={
                "seqs_observed": stored_checked,
                "acks_checked": len(table.acked),
                "recv_sample_checked": sampled,
                "message_ids_reused": len(reused),
                **{k: incons.counts[k] for k in _INCONS_KINDS},
            },
            examples=incons.take(),
            no_data=stored_checked == 0,
        ),
        "log_gaps": CheckResult(
            name="log_gaps",
            valid=not gaps,
            counts={
                "reads_checked": n_reads,
                "final_reads_checked": n_reads,
                "messages_checked": n_messages,
                "incomplete_reads": incomplete,
                **{k: gaps.counts[k] for k in _GAP_KINDS},
            },
            examples=gaps.take(),
            no_data=n_reads == 0,
        ),
        "aborted_read": CheckResult(
            name="aborted_read",
            valid=not aborted,
            counts={
                "definitely_failed": failed_keys,
                "aborted": aborted.counts["failed_send_visible"],
                "never_sent": aborted.counts["never_sent"] + aborted.counts["wrong_channel"],
                "observations_checked": stored_checked + sampled,
            },
            examples=aborted.take(),
            no_data=stored_checked == 0,
        ),
        "nonmonotonic_delivery": CheckResult(
            name="nonmonotonic_delivery",
            valid=sum(r.regressions for r in recvs) == 0,
            counts={
                "recvs": recv_total,
                "regressions": sum(r.regressions for r in recvs),
            },
            examples=[e for r in recvs for e in r.examples][:10],
            no_data=recv_total == 0,
        ),
    }
    return results


_INCONS_KINDS = (
    "ack_id_differs",
    "payload_differs",
    "message_id_reused",
    "reads_differ",
    "recv_differs",
)
_GAP_KINDS = ("gap", "missing_prefix", "repeat", "out_of_order", "incomplete")


def _last(read: FinalRead) -> int:
    return read.seq[-1] if len(read) else 0


def _check_order(read: FinalRead, gaps: Examples) -> None:
    """A final read from seq 1 holds exactly 1..N in order. The common case is one C-speed
    comparison; only a read that fails it is walked."""
    if read.seq == array("q", range(1, len(read) + 1)):
        return
    where = {"node": read.node, "channel": read.channel}
    seen: set[int] = set()
    prev = 0
    for s in read.seq:
        if s in seen:
            gaps.add("repeat", seq=s, **where)
        elif s < prev:
            gaps.add("out_of_order", after=prev, seq=s, **where)
        seen.add(s)
        prev = max(prev, s)
    lo = None
    for s in range(1, prev + 2):
        if s not in seen and s <= prev:
            lo = s if lo is None else lo
        elif lo is not None:
            span = f"{lo}..{s - 1}" if s - 1 > lo else str(lo)
            gaps.add("missing_prefix" if lo == 1 else "gap", missing=span, **where)
            lo = None


def _index(read: FinalRead, seq: int) -> int:
    """Where ``seq`` sits in a read (its seq minus one in an ordered read)."""
    if 0 < seq <= len(read) and read.seq[seq - 1] == seq:
        return seq - 1
    return list(read.seq).index(seq)


def _positions(read: FinalRead, dups: Examples, where: dict[str, Any]) -> dict[int, int]:
    """Key -> seq over one read; a key at two seqs is a duplicate."""
    at: dict[int, int] = {}
    for seq, key in zip(read.seq, read.key, strict=True):
        if key == PHANTOM:
            continue
        before = at.get(key)
        if before is not None and before != seq:
            dups.add("stored_twice", seqs=[before, seq], **_name(key), **where)
            continue
        at[key] = seq
    return at


def _check_stored(
    table: SendTable,
    read: FinalRead,
    c: int,
    aborted: Examples,
    incons: Examples,
    where: dict[str, Any],
) -> None:
    """Every stored message was sent by the flood, to this channel, and not definitely refused;
    its payload is its sender's."""
    for ex in read.phantoms:
        aborted.add("never_sent", **ex, **where)
    outcomes = table.outcomes
    for seq, key, ok in zip(read.seq, read.key, read.payload_ok, strict=True):
        if key == PHANTOM:
            continue
        o = outcomes.get(key)
        if o is None:
            aborted.add("never_sent", seq=seq, **_name(key), **where)
        elif o & 0xFF == _BIT[FAIL]:
            aborted.add("failed_send_visible", seq=seq, **_name(key), **where)
        elif o >> 8 != c:
            aborted.add("wrong_channel", seq=seq, sent_to=o >> 8, **_name(key), **where)
        if not ok:
            incons.add("payload_differs", seq=seq, **_name(key), **where)


def _compare(a: FinalRead, node_a: int, b: FinalRead, incons: Examples) -> None:
    """Two different final reads of one channel: a shorter one is only behind (the acked
    messages it lacks are lost_acked's to report); different messages at one seq are not."""
    common = min(len(a), len(b))
    for i in range(common):
        if (a.seq[i], a.key[i], a.message_id[i]) != (b.seq[i], b.key[i], b.message_id[i]):
            incons.add(
                "reads_differ",
                channel=a.channel,
                seq=a.seq[i],
                nodes=[node_a, b.node],
                held=[{**_name(a.key[i]), "message_id": a.message_id[i]}, _name_of(b, i)],
            )
            return


def _name_of(read: FinalRead, i: int) -> dict[str, Any]:
    return {**_name(read.key[i]), "message_id": read.message_id[i], "seq": read.seq[i]}


def _reused_ids(ids: array[int]) -> list[int]:
    ordered = sorted(ids)
    return [a for a, b in itertools.pairwise(ordered) if a == b]


def _check_recv_sample(
    table: SendTable,
    channels: dict[int, _Channel],
    recvs: Sequence[RecvSummary],
    incons: Examples,
    aborted: Examples,
) -> int:
    checked = 0
    for r in recvs:
        for c, seq, key, mid in r.sample:
            ch = channels.get(c)
            if ch is None or not ch.reads:
                continue
            read = ch.reads[0][0]
            checked += 1
            try:
                i = _index(read, seq)
            except ValueError:
                i = -1
            if i < 0 or read.key[i] != key or read.message_id[i] != mid:
                incons.add(
                    "recv_differs",
                    channel=c,
                    seq=seq,
                    recv={**_name(key), "message_id": mid},
                    stored=None if i < 0 else _name_of(read, i),
                )
            o = table.outcomes.get(key)
            if o is not None and o & 0xFF == _BIT[FAIL]:
                aborted.add("failed_send_visible", channel=c, seq=seq, via="recv", **_name(key))
    return checked


# --- a whole run --------------------------------------------------------------------------------


def load_recvs(folder: Path) -> list[RecvSummary]:
    return [
        RecvSummary.from_json(json.loads(p.read_text()))
        for p in sorted(folder.glob("recv-w*.json"))
    ]


def check_flood_run(
    folder: Path,
    history: HistoryLike,
    *,
    required: Collection[str] = FLOOD_SAFETY,
    unchecked: Collection[str] = (),
) -> tuple[Verdict, dict[str, Any]]:
    """The verdict of a flood run from its folder (``results/<run>/flood``) and its JSON
    history (nemesis, digests), and the run's load figures."""
    table = SendTable()
    for path in sorted(folder.glob("sends-w*.bin")):
        for a in read_attempts(path):
            table.add(a)

    def reads() -> Iterable[FinalRead]:
        for path in sorted(folder.glob("final-n*.bin")):
            yield from read_final_reads(path)

    results = check_flood(table, reads(), load_recvs(folder))
    results["replica_divergence"] = check_replica_divergence(history)
    verdict = Verdict(
        valid=False, results=results, required=tuple(required), unchecked=tuple(unchecked)
    )
    verdict.valid = not verdict.failed and not verdict.missing and not verdict.unchecked
    return verdict, table.load()
