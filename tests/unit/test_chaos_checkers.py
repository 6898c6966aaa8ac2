"""Chaos history format and checkers: every checker passes clean histories and flags its anomaly.

Three layers: the JSONL history (round trip, torn tails, pairing, thread safety); one hand-written
transcript per checker, clean and with exactly its anomaly; and a simulated correct server whose
random histories must pass every checker, and fail the right one after a single mutation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaos.checkers import (
    CHECKERS,
    check_aborted_read,
    check_all,
    check_availability,
    check_duplicates,
    check_inconsistent_seq,
    check_log_gaps,
    check_lost_acked,
    check_nonmonotonic_delivery,
    check_read_floor_regression,
    check_replica_divergence,
    check_stale_read,
    send_outcome,
)
from chaos.history import (
    ChannelDigest,
    DigestValue,
    Event,
    FloorValue,
    HistoryError,
    HistoryWriter,
    MemoryHistory,
    NemesisValue,
    PendingOp,
    RawValue,
    ReadMessage,
    ReadValue,
    RecvValue,
    SendValue,
    classify_send_reason,
    load_history,
    pair_ops,
    parse_history,
)

G1 = "2:g1"
G2 = "2:g2"
P12 = "1:u1@u2"


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def wall(self) -> float:
        return 1_767_000_000.0 + self.t

    def mono(self) -> float:
        return self.t


def ph(cmn: str) -> str:
    return f"h-{cmn}"


def msg(
    seq: int, cmn: str, uid: str = "u1", mid: int | None = None, h: str | None = None
) -> ReadMessage:
    return ReadMessage(
        seq, 1000 + seq if mid is None else mid, cmn, uid, ph(cmn) if h is None else h
    )


class Scenario:
    """Synthetic histories that read like transcripts. Every record moves the fake clock on by
    ``dt`` first, so file order is time order unless a test holds an op open on purpose."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.rec = MemoryHistory(self.clock)
        self.dt = 0.01

    @property
    def events(self) -> list[Event]:
        return self.rec.events

    def at(self, t: float) -> Scenario:
        self.clock.t = t
        return self

    def tick(self, dt: float | None = None) -> None:
        self.clock.t += self.dt if dt is None else dt

    def invoke_send(
        self, channel: str, cmn: str, uid: str = "u1", process: str = "c1", node: int = 1, **kw: Any
    ) -> PendingOp[SendValue]:
        self.tick()
        value = SendValue(client_msg_no=cmn, from_uid=uid, payload_hash=ph(cmn), **kw)
        return self.rec.invoke("send", process, value, channel=channel, node=node)

    def send_ok(
        self, channel: str, cmn: str, seq: int, uid: str = "u1", mid: int | None = None, **kw: Any
    ) -> Event:
        op = self.invoke_send(channel, cmn, uid, **kw)
        self.tick()
        return op.ok(message_seq=seq, message_id=1000 + seq if mid is None else mid, reason=1)

    def send_info(self, channel: str, cmn: str, uid: str = "u1", **kw: Any) -> Event:
        op = self.invoke_send(channel, cmn, uid, **kw)
        self.tick()
        return op.info(error="timeout")

    def send_fail(
        self, channel: str, cmn: str, reason: int = 3, uid: str = "u1", **kw: Any
    ) -> Event:
        op = self.invoke_send(channel, cmn, uid, **kw)
        self.tick()
        return op.fail(reason=reason)

    def read(
        self,
        channel: str,
        messages: list[ReadMessage],
        *,
        start: int = 1,
        final: bool = False,
        complete: bool = True,
        head: int | None = None,
        node: int = 1,
        process: str = "r1",
    ) -> Event:
        self.tick()
        op = self.rec.invoke(
            "final_read" if final else "read",
            process,
            ReadValue(start_seq=start),
            channel=channel,
            node=node,
        )
        self.tick()
        return op.ok(messages=tuple(messages), complete=complete, head=head)

    def recv(
        self,
        channel: str,
        session: str,
        m: ReadMessage,
        process: str = "c2",
        with_hash: bool = True,
    ) -> Event:
        self.tick()
        value = RecvValue(
            session=session,
            seq=m.seq,
            message_id=m.message_id,
            client_msg_no=m.client_msg_no,
            from_uid=m.from_uid,
            payload_hash=m.payload_hash if with_hash else None,
        )
        return self.rec.observe("recv", process, value, channel=channel, node=1)

    def digest(self, node: int, group: int, channels: dict[str, tuple[int, str]]) -> Event:
        self.tick()
        value = DigestValue(node, group, {c: ChannelDigest(h, x) for c, (h, x) in channels.items()})
        return self.rec.observe("replica_digest", "runner", value, node=node)

    def nemesis(
        self, fault: str, action: Literal["start", "stop"], targets: tuple[str, ...] = ("1",)
    ) -> None:
        self.tick()
        op = self.rec.invoke("nemesis", "nemesis", NemesisValue(fault, action, targets))
        self.tick()
        op.ok()

    def floor(self, uid: str, channel: str, f: str = "read_floor", **kw: Any) -> Event:
        self.tick()
        return self.rec.observe(f, "r1", FloorValue(uid, **kw), channel=channel)


def kinds(result: Any) -> set[str]:
    return {e["kind"] for e in result.examples}


# --- the history format ----------------------------------------------------------------------


def test_writer_round_trips_every_value_kind(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    clock = FakeClock()
    with HistoryWriter(path, clock) as w:
        s = w.invoke("send", "c1", SendValue("m1", "u1", ph("m1"), group=3), channel=G1, node=2)
        clock.t += 0.5
        s.ok(message_id=77, message_seq=1, reason=1)
        r = w.invoke("final_read", "r1", ReadValue(start_seq=1), channel=G1, node=1)
        r.ok(messages=(msg(1, "m1", mid=77),), complete=True, head=1)
        w.observe("recv", "c2", RecvValue("s1", 1, 77, "m1", "u1"), channel=G1)
        w.observe(
            "replica_digest", "runner", DigestValue(1, 3, {G1: ChannelDigest(1, "abc")}), node=1
        )
        w.invoke("nemesis", "nemesis", NemesisValue("kill", "start", ("2",), "k1")).ok()
        w.observe("unread", "r1", FloorValue("u2", floor=1, unread=0, head=1), channel=G1)
        w.observe("whatever", "x", RawValue({"a": [1, 2]}))
        w.flush(fsync=True)
    loaded = load_history(path)
    assert [e.f for e in loaded] == [
        "send", "send", "final_read", "final_read", "recv", "replica_digest",
        "nemesis", "nemesis", "unread", "whatever",
    ]  # fmt: skip
    ok = loaded[1]
    assert ok.type == "ok" and ok.mono == 100.5 and ok.time == 1_767_000_100.5
    # The completion carries the invocation's fields: a line is readable on its own.
    assert ok.value == SendValue("m1", "u1", ph("m1"), 77, 1, 1, group=3)
    assert loaded[3].value == ReadValue(1, None, (msg(1, "m1", mid=77),), True, 1)
    assert [e.index for e in loaded] == list(range(10))
    # Re-serialising gives the same lines.
    again = [json.dumps(e.to_json(), separators=(",", ":")) for e in loaded]
    assert again == path.read_text().splitlines()


def test_torn_last_line_is_dropped_but_a_torn_middle_is_an_error(tmp_path: Path) -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1)
    lines = [json.dumps(e.to_json()) + "\n" for e in sc.events]
    assert len(parse_history([*lines, '{"type": "inv'])) == 2
    with pytest.raises(HistoryError, match="line 3"):
        parse_history([*lines, '{"type": "inv'], tolerate_torn_tail=False)
    with pytest.raises(HistoryError, match="line 2"):
        parse_history([lines[0], "{not json\n", lines[1]])
    bad = json.loads(lines[1])
    bad["value"]["message_seq"] = True
    with pytest.raises(HistoryError, match="message_seq"):
        parse_history([lines[0], json.dumps(bad) + "\n"])


def test_event_value_must_match_f() -> None:
    with pytest.raises(HistoryError, match="SendValue"):
        Event("ok", "send", "c1", 1, RecvValue("s", 1, 1, "m", "u"))
    with pytest.raises(HistoryError, match="event type"):
        Event("done", "x", "c1", 1, RawValue())  # type: ignore[arg-type]


def test_pairing_observations_and_open_ops() -> None:
    sc = Scenario()
    pending = sc.invoke_send(G1, "m1")
    sc.recv(G1, "s1", msg(1, "m0"))
    ops = pair_ops(sc.events)
    assert [(o.f, o.type, o.invoke is None, o.completion is None) for o in ops] == [
        ("send", "info", False, True),  # never completed: indeterminate
        ("recv", "ok", True, False),  # an observation
    ]
    pending.ok(message_seq=1, message_id=5)
    with pytest.raises(HistoryError, match="twice"):
        pending.fail(reason=3)
    dup = dataclasses.replace(sc.events[0], index=99)
    with pytest.raises(HistoryError, match="invoked twice"):
        pair_ops([*sc.events, dup])


def test_writer_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as w:

        def worker(n: int) -> None:
            for i in range(300):
                op = w.invoke("send", f"c{n}", SendValue(f"m{n}-{i}", "u1", "h"), channel=G1)
                op.ok(message_seq=i + 1, message_id=i)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    events = load_history(path)
    assert len(events) == 8 * 300 * 2
    ops = pair_ops(events)
    assert len(ops) == 8 * 300 and all(o.type == "ok" for o in ops)
    monos = [e.mono for e in events]
    assert monos == sorted(monos)  # stamped under the lock: file order is time order


@pytest.mark.parametrize(
    ("reason", "outcome"),
    [(1, "ok"), (3, "fail"), (9, "fail"), (16, "fail"), (23, "fail"), (24, "fail"), (25, "fail"),
     (10, "info"), (17, "info"), (18, "info"), (15, "info"), (0, "info"), (6, "info")],
)  # fmt: skip
def test_reason_classification(reason: int, outcome: str) -> None:
    assert classify_send_reason(reason) == outcome


# --- lost_acked --------------------------------------------------------------------------------


def test_lost_acked_clean_with_indeterminate_sends() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1)
    sc.send_info(G1, "m2")  # committed
    sc.send_info(G1, "m3")  # never committed: absent is fine
    sc.send_ok(G1, "m4", 3)
    for node in (1, 2, 3):
        sc.read(G1, [msg(1, "m1"), msg(2, "m2"), msg(3, "m4")], final=True, node=node)
    r = check_lost_acked(sc.events)
    assert r.valid and r.counts["acked"] == 2 and r.counts["final_reads"] == 3


def test_lost_acked_flags_a_message_missing_on_one_node() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1)
    sc.send_ok(G1, "m2", 2)
    sc.read(G1, [msg(1, "m1"), msg(2, "m2")], final=True, node=1)
    sc.read(G1, [msg(1, "m1")], final=True, node=2)
    r = check_lost_acked(sc.events)
    assert not r.valid and r.name == "lost_acked"
    assert r.counts["lost"] == 1 and r.counts["lost_observations"] == 1
    (ex,) = r.examples
    assert ex["kind"] == "missing" and ex["client_msg_no"] == "m2" and ex["acked_seq"] == 2
    assert ex["final_read"]["node"] == 2 and ex["final_read_last_seq"] == 1


def test_lost_acked_flags_a_message_at_another_seq() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1)
    sc.read(G1, [msg(1, "x", uid="u9"), msg(2, "m1")], final=True)
    r = check_lost_acked(sc.events)
    assert not r.valid and r.examples[0]["kind"] == "moved" and r.examples[0]["found_at"] == [2]


def test_lost_acked_without_a_final_read_is_unverified() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1)
    sc.send_ok(G1, "m2", 2)
    # A final read that stopped after one page vouches for seq 1 only.
    sc.read(G1, [msg(1, "m1")], final=True, complete=False)
    r = check_lost_acked(sc.events)
    assert not r.valid and r.counts["lost"] == 0 and r.counts["unverified"] == 1
    assert r.examples[0]["kind"] == "unverified" and r.examples[0]["client_msg_no"] == "m2"


# --- duplicates --------------------------------------------------------------------------------


def test_duplicates_clean_with_a_retry_and_two_senders_sharing_a_client_msg_no() -> None:
    sc = Scenario()
    sc.send_info(G1, "m1")
    sc.send_ok(G1, "m1", 1, attempt=2)  # the retry returns the original seq
    sc.send_ok(G1, "m1", 2, uid="u2")  # another sender's key
    sc.read(G1, [msg(1, "m1"), msg(2, "m1", uid="u2")], final=True)
    sc.recv(G1, "s1", msg(1, "m1"))
    assert check_duplicates(sc.events).valid


def test_duplicates_flags_one_key_stored_twice() -> None:
    sc = Scenario()
    sc.send_info(G1, "m1")  # indeterminate: may appear, but once
    sc.read(G1, [msg(1, "m1"), msg(2, "m1", mid=2000)], final=True)
    r = check_duplicates(sc.events)
    assert not r.valid and r.name == "duplicates" and r.counts["duplicated_keys"] == 1
    ex = r.examples[0]
    assert ex["kind"] == "stored_twice" and ex["client_msg_no"] == "m1"
    assert set(ex["seqs"]) == {"1", "2"}


def test_duplicates_flags_a_retry_acked_at_another_seq() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1)
    sc.send_ok(G1, "m1", 2, attempt=2)
    r = check_duplicates(sc.events)
    assert not r.valid and r.examples[0]["kind"] == "acks_disagree"


def test_duplicates_across_recvs_of_two_sessions() -> None:
    sc = Scenario()
    sc.recv(G1, "s1", msg(1, "m1"))
    sc.recv(G1, "s2", msg(4, "m1"))
    assert not check_duplicates(sc.events).valid


# --- inconsistent_seq --------------------------------------------------------------------------


def test_inconsistent_seq_clean_ack_read_and_recv_agree() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1)
    sc.read(G1, [msg(1, "m1")], node=2)
    sc.recv(G1, "s1", msg(1, "m1"), with_hash=False)  # unseen fields are not compared
    assert check_inconsistent_seq(sc.events).valid


def test_inconsistent_seq_flags_two_nodes_disagreeing_on_bytes() -> None:
    sc = Scenario()
    sc.read(G1, [msg(1, "m1")], final=True, node=1)
    sc.read(G1, [msg(1, "m1", h="corrupt")], final=True, node=2)
    r = check_inconsistent_seq(sc.events)
    assert not r.valid and r.name == "inconsistent_seq"
    ex = r.examples[0]
    assert ex["kind"] == "seq_disagrees" and ex["seq"] == 1 and ex["fields"] == ["payload_hash"]
    assert {v["payload_hash"] for v in ex["variants"]} == {ph("m1"), "corrupt"}


def test_inconsistent_seq_flags_two_acks_for_one_seq() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1, mid=1)
    sc.send_ok(G1, "m2", 1, mid=2, process="c2")
    r = check_inconsistent_seq(sc.events)
    assert not r.valid and r.examples[0]["fields"] == ["message_id", "sender", "payload_hash"]


def test_inconsistent_seq_flags_a_message_id_at_two_places() -> None:
    sc = Scenario()
    sc.read(G1, [msg(1, "m1", mid=7)])
    sc.read(G2, [msg(1, "m2", mid=7)])
    r = check_inconsistent_seq(sc.events)
    assert not r.valid and kinds(r) == {"message_id_reused"}


# --- log_gaps ----------------------------------------------------------------------------------


def test_log_gaps_clean() -> None:
    sc = Scenario()
    sc.read(G1, [msg(1, "a"), msg(2, "b"), msg(3, "c")], final=True, head=3)
    sc.read(G1, [msg(2, "b"), msg(3, "c")], start=2, head=3)
    sc.read(G1, [], start=4, head=3)  # past the head
    sc.read(G1, [msg(1, "a")], complete=False)  # one page of many
    assert check_log_gaps(sc.events).valid


@pytest.mark.parametrize(
    ("seqs", "start", "head", "kind"),
    [
        ([1, 3], 1, None, "gap"),
        ([2, 3], 1, None, "missing_prefix"),
        ([1, 3, 2], 1, None, "out_of_order"),
        ([1, 2, 2], 1, None, "repeat"),
        ([1, 2], 1, 3, "head_mismatch"),
        ([], 1, 2, "head_mismatch"),
        ([4, 5], 5, None, "before_start"),
    ],
)
def test_log_gaps_flags(seqs: list[int], start: int, head: int | None, kind: str) -> None:
    sc = Scenario()
    sc.read(
        G1, [msg(s, f"m{s}-{i}") for i, s in enumerate(seqs)], start=start, head=head, final=True
    )
    r = check_log_gaps(sc.events)
    assert not r.valid and r.name == "log_gaps" and kind in kinds(r)
    assert r.examples[0]["channel"] == G1


def test_log_gaps_reports_the_missing_range() -> None:
    sc = Scenario()
    sc.read(G1, [msg(1, "a"), msg(5, "e")], final=True)
    r = check_log_gaps(sc.events)
    assert r.examples[0]["missing"] == "2..4" and r.counts["missing_seqs"] == 3


# --- aborted_read ------------------------------------------------------------------------------


def test_aborted_read_clean() -> None:
    sc = Scenario()
    sc.send_fail(G1, "f1", reason=3)  # rejected, never seen
    sc.send_fail(G1, "m18", reason=18)  # "retry": not a definite failure, may be visible
    sc.send_info(G1, "m2")
    sc.send_fail(G1, "m2", reason=24, attempt=2)  # disbanded before the retry; attempt 1 stuck
    sc.send_ok(G1, "m3", 3)
    sc.read(G1, [msg(1, "m18"), msg(2, "m2"), msg(3, "m3")], final=True)
    r = check_aborted_read(sc.events)
    assert r.valid and r.counts["definitely_failed"] == 1


def test_aborted_read_flags_a_failed_send_in_a_read() -> None:
    sc = Scenario()
    sc.send_fail(G1, "f1", reason=3)
    sc.read(G1, [msg(1, "f1")], final=True, node=3)
    r = check_aborted_read(sc.events)
    assert not r.valid and r.name == "aborted_read" and r.counts["aborted"] == 1
    ex = r.examples[0]
    assert ex["kind"] == "failed_send_visible" and ex["client_msg_no"] == "f1"
    assert ex["reason"] == 3 and ex["seen_by"]["node"] == 3


def test_aborted_read_flags_a_failed_send_delivered() -> None:
    sc = Scenario()
    sc.send_fail(G1, "f1", reason=9)
    sc.recv(G1, "s1", msg(1, "f1"))
    r = check_aborted_read(sc.events)
    assert not r.valid and r.examples[0]["seen_by"]["source"] == "recv"


def test_aborted_read_flags_phantoms_unless_allowed() -> None:
    sc = Scenario()
    sc.read(G1, [msg(1, "ghost", uid="u7")])
    assert kinds(check_aborted_read(sc.events)) == {"never_sent"}
    assert check_aborted_read(sc.events, allow_unknown=True).valid


# --- nonmonotonic_delivery ---------------------------------------------------------------------


def test_delivery_clean_with_skips_and_a_reconnect() -> None:
    sc = Scenario()
    for s in (1, 2, 5):
        sc.recv(G1, "s1", msg(s, f"m{s}"))
    sc.recv(G2, "s1", msg(1, "x"))  # channels are independent
    sc.recv(G1, "s2", msg(3, "m3"))  # a new session may start anywhere
    assert check_nonmonotonic_delivery(sc.events).valid


@pytest.mark.parametrize(("seqs", "kind"), [([1, 3, 2], "backwards"), ([1, 2, 2], "repeat")])
def test_delivery_flags(seqs: list[int], kind: str) -> None:
    sc = Scenario()
    for s in seqs:
        sc.recv(G1, "s1", msg(s, f"m{s}"))
    r = check_nonmonotonic_delivery(sc.events)
    assert not r.valid and r.name == "nonmonotonic_delivery"
    ex = r.examples[0]
    assert ex["kind"] == kind and (ex["previous_seq"], ex["seq"]) == (seqs[1], seqs[2])
    assert ex["session"] == "s1" and ex["channel"] == G1


# --- replica_divergence ------------------------------------------------------------------------


def test_replicas_clean_after_heal_ignoring_digests_taken_during_the_fault() -> None:
    sc = Scenario()
    sc.nemesis("partition", "start")
    sc.digest(1, 0, {G1: (3, "aaa")})
    sc.digest(2, 0, {G1: (2, "old")})  # lagging during the fault: not a split brain
    sc.nemesis("partition", "stop")
    for node in (1, 2, 3):
        sc.digest(node, 0, {G1: (3, "aaa"), G2: (0, "")})
    r = check_replica_divergence(sc.events)
    assert r.valid and r.counts["groups_compared"] == 1 and r.counts["channels_compared"] == 1


@pytest.mark.parametrize(
    ("third", "kind"),
    [({G1: (3, "bbb")}, "hash"), ({G1: (2, "aab")}, "head"), ({}, "missing")],
)
def test_replicas_flag(third: dict[str, tuple[int, str]], kind: str) -> None:
    sc = Scenario()
    sc.digest(1, 4, {G1: (3, "aaa")})
    sc.digest(2, 4, {G1: (3, "aaa")})
    sc.digest(3, 4, third)
    r = check_replica_divergence(sc.events)
    assert not r.valid and r.name == "replica_divergence"
    ex = r.examples[0]
    assert ex["kind"] == kind and ex["group"] == 4 and ex["channel"] == G1
    assert ex["replicas"]["1"] == {"head": 3, "hash": "aaa"}


# --- stale_read --------------------------------------------------------------------------------


def test_stale_read_clean_including_concurrent_and_partial_reads() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1)
    pending = sc.invoke_send(G1, "m2")
    sc.read(G1, [msg(1, "m1")], head=1)  # concurrent with m2: may miss it
    sc.tick()
    pending.ok(message_seq=2, message_id=1002)
    sc.read(G1, [msg(1, "m1")], complete=False)  # one page: vouches for seq 1 only
    sc.read(G1, [msg(2, "m2")], start=2, head=2)
    sc.read(G1, [msg(1, "m1"), msg(2, "m2")], final=True, head=2)
    r = check_stale_read(sc.events)
    assert r.valid and r.counts["acked_in_range_checked"] == 5  # 1 + 1 + 1 + 2


def test_stale_read_flags_a_read_that_misses_an_earlier_ack() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1)
    sc.send_ok(G1, "m2", 2)
    sc.tick(2.0)
    sc.read(G1, [msg(1, "m1")], head=1, node=3)  # an old leader's view, self-consistent
    r = check_stale_read(sc.events)
    assert not r.valid and r.name == "stale_read" and r.counts["stale_reads"] == 1
    ex = r.examples[0]
    assert ex["kind"] == "missed_acked" and ex["seq"] == 2 and ex["client_msg_no"] == "m2"
    assert ex["read"]["node"] == 3 and ex["acked_before_read_s"] == pytest.approx(2.01)
    assert check_log_gaps(sc.events).valid  # nothing else is wrong with that read


# --- read_floor_regression ---------------------------------------------------------------------


def test_read_floor_clean() -> None:
    sc = Scenario()
    sc.floor("u2", G1, floor=1, head=3)
    sc.floor("u2", G1, "unread", unread=2, head=3)
    sc.floor("u2", G1, floor=3, head=4)
    sc.floor("u3", G1, floor=0, head=4)  # users are independent
    # Overlapping observations are not ordered: a slower one may report the older floor.
    sc.tick()
    slow = sc.rec.invoke("read_floor", "r2", FloorValue("u2"), channel=G1)
    sc.tick()
    fast = sc.rec.invoke("read_floor", "r3", FloorValue("u2"), channel=G1)
    sc.tick()
    fast.ok(floor=4, head=4)
    slow.ok(floor=3, head=4)
    assert check_read_floor_regression(sc.events).valid


@pytest.mark.parametrize(
    ("second", "kind"),
    [
        ({"floor": 1, "head": 3}, "floor_regressed"),
        ({"floor": 2, "head": 2}, "head_regressed"),
        ({"floor": 4, "head": 3}, "floor_above_head"),
        ({"unread": 5, "head": 3}, "unread_above_head"),
        ({"unread": -1}, "negative"),
    ],
)
def test_read_floor_flags(second: dict[str, int], kind: str) -> None:
    sc = Scenario()
    sc.floor("u2", G1, floor=2, head=3)
    sc.floor("u2", G1, **second)
    r = check_read_floor_regression(sc.events)
    assert not r.valid and r.name == "read_floor_regression" and kinds(r) == {kind}
    assert r.examples[0]["uid"] == "u2" and r.examples[0]["channel"] == G1


def test_read_floor_with_no_observation_is_no_data_not_valid() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1, uid="u2")  # a floor lower bound, but nothing observed
    sc.tick()
    failed = sc.rec.invoke("read_floor", "r1", FloorValue("u2"), channel=G1)
    failed.fail()  # a read that failed observed nothing
    r = check_read_floor_regression(sc.events)
    assert r.valid and r.no_data and r.status == "no data"
    assert r.counts["observations"] == 0
    assert r.to_json()["status"] == "no data"
    sc.floor("u2", G1, floor=1, unread=0, head=1)
    r = check_read_floor_regression(sc.events)
    assert r.status == "valid" and r.counts["observations"] == 1


def test_read_floor_never_below_the_users_own_acked_message() -> None:
    """The server marks one's own messages read: once u2's send is acked at seq 3, u2's floor is
    at least 3 for every read begun after the ack, but a read begun before it may be older."""
    sc = Scenario()
    sc.tick()
    early = sc.rec.invoke("read_floor", "r1", FloorValue("u2"), channel=G1)
    sc.send_ok(G1, "m3", 3, uid="u2")
    sc.tick()
    early.ok(floor=0, unread=2, head=3)  # began before the ack completed: not ordered
    sc.floor("u3", G1, floor=0, head=3)  # another user's floor does not move
    assert check_read_floor_regression(sc.events).valid
    sc.floor("u2", G1, floor=2, unread=1, head=3)
    r = check_read_floor_regression(sc.events)
    assert not r.valid and kinds(r) == {"floor_regressed"}
    ex = r.examples[0]
    assert ex["earlier"] == 3 and ex["later"] == 2 and ex["earlier_source"] == "own_send"


def test_read_floor_never_below_a_completed_clear_unread() -> None:
    sc = Scenario()
    sc.floor("u2", G1, floor=1, unread=4, head=5)
    sc.tick()
    maybe = sc.rec.invoke("clear_unread", "u2:floor", FloorValue("u2", floor=5), channel=G1)
    sc.tick()
    maybe.info()  # may or may not have happened: promises nothing
    sc.tick()
    clear = sc.rec.invoke("clear_unread", "u2:floor", FloorValue("u2", floor=4), channel=G1)
    sc.tick()
    during = sc.rec.invoke("read_floor", "u2:floor", FloorValue("u2"), channel=G1)
    sc.tick()
    clear.ok()
    sc.tick()
    during.ok(floor=1, unread=4, head=5)  # concurrent with the clear
    assert check_read_floor_regression(sc.events).valid
    sc.floor("u2", G1, floor=3, unread=2, head=5)
    r = check_read_floor_regression(sc.events)
    assert not r.valid and kinds(r) == {"floor_regressed"}
    assert r.examples[0]["earlier_source"] == "clear_unread" and r.examples[0]["earlier"] == 4
    assert r.counts["floor_lower_bounds"] == 1  # the info clear is no bound


@pytest.mark.parametrize(("unread", "ok"), [(0, True), (3, True), (4, False)])
def test_unread_counts_only_messages_above_the_floor(unread: int, ok: bool) -> None:
    sc = Scenario()
    sc.floor("u2", G1, floor=2, unread=unread, head=5)
    r = check_read_floor_regression(sc.events)
    assert r.valid is ok
    if not ok:
        assert kinds(r) == {"unread_above_head"} and r.examples[0]["most"] == 3


@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_every_checker_reports_no_data_on_an_empty_history(name: str) -> None:
    r = CHECKERS[name]([])
    assert r.valid and r.status == "no data" and r.to_json()["status"] == "no data"


def test_a_required_property_without_data_makes_the_verdict_inconclusive() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1)
    sc.read(G1, [msg(1, "m1")], final=True, head=1)
    plain = check_all(sc.events)
    # Nothing required (the default): only "nothing was found broken", as before.
    assert plain.valid and plain.status == "valid"
    assert "read_floor_regression" in plain.no_data and plain.missing == []
    strict = check_all(sc.events, required=["lost_acked", "read_floor_regression"])
    assert not strict.valid and strict.status == "inconclusive"
    assert strict.failed == [] and strict.missing == ["read_floor_regression"]
    out = strict.to_json()
    assert out["status"] == "inconclusive" and out["valid"] is False
    assert out["missing"] == ["read_floor_regression"]
    assert out["results"]["read_floor_regression"]["status"] == "no data"
    sc.floor("u1", G1, floor=1, unread=0, head=1)
    assert check_all(sc.events, required=["lost_acked", "read_floor_regression"]).valid
    why = check_all(sc.events, unchecked=["2 final reads kept failing"])
    assert why.status == "inconclusive" and not why.valid
    # A violation outranks missing data.
    sc.send_ok(G1, "m2", 2)
    broken = check_all(sc.events, required=["replica_divergence"])
    assert broken.status == "invalid" and "lost_acked" in broken.failed


# --- availability ------------------------------------------------------------------------------


def _fault_run(recovered: bool) -> Scenario:
    sc = Scenario()
    sc.dt = 0.0
    sc.at(1.0).send_ok(G1, "a", 1, group=0)  # before: 0 ms
    sc.at(10.0).nemesis("partition", "start", ("1",))  # window 10.0 .. 14.0
    p = sc.at(10.2).invoke_send(G1, "b", group=0)
    sc.at(10.5)
    p.ok(message_seq=2, message_id=2)  # during: 300 ms
    p = sc.at(11.0).invoke_send(G1, "c", group=0)
    sc.at(13.0)
    p.ok(message_seq=3, message_id=3)  # during: 2000 ms; the gap 10.5 -> 13.0
    sc.at(14.0).nemesis("partition", "stop")
    p = sc.at(14.1).invoke_send(G1, "d", group=0)
    sc.at(14.7)
    if recovered:
        p.ok(message_seq=4, message_id=4)  # after: 600 ms; recovered 0.7 s after heal
    else:
        p.info(error="timeout")
    return sc


def test_availability_measures_gap_recovery_and_latency() -> None:
    r = check_availability(_fault_run(recovered=True).events)
    assert r.valid and r.counts["fault_windows"] == 1
    assert r.counts["max_gap_s"] == pytest.approx(2.5)
    assert r.counts["max_recovery_s"] == pytest.approx(0.7)
    assert r.counts["ok_sends_before"] == 1 and r.counts["ok_sends_during"] == 2
    assert r.counts["latency_ms_max_during"] == pytest.approx(2000)
    assert r.counts["latency_ms_p50_during"] == pytest.approx(300)
    assert r.counts["latency_ms_p99_after"] == pytest.approx(600)
    (w,) = r.details["windows"]
    assert w["fault"] == "partition" and w["duration_s"] == pytest.approx(4.0)
    assert w["groups"]["0"]["longest_gap_s"] == pytest.approx(2.5)
    assert w["worst_channels"][G1]["ok_in_window"] == 2
    json.dumps(r.to_json(), allow_nan=False)


def test_availability_fails_only_against_a_bound() -> None:
    assert not check_availability(_fault_run(True).events, recovery_bound_s=0.5).valid
    assert check_availability(_fault_run(True).events, recovery_bound_s=1.0).valid
    stuck = check_availability(_fault_run(False).events, recovery_bound_s=60)
    assert not stuck.valid and stuck.name == "availability"
    assert kinds(stuck) == {"channel_unrecovered", "group_unrecovered"}
    assert check_availability(_fault_run(False).events).valid  # a measurement by default


# --- the verdict -------------------------------------------------------------------------------


def test_check_all_verdict_is_json_and_names_the_failures() -> None:
    sc = Scenario()
    sc.send_ok(G1, "m1", 1)
    sc.read(G1, [msg(1, "m1")], final=True, head=1)
    v = check_all(sc.events)
    assert v.valid and set(v.results) == set(CHECKERS)
    sc.read(G1, [msg(1, "m1"), msg(3, "x", uid="u9")], final=True)
    v = check_all(sc.events, allow_unknown_messages=True)
    assert not v.valid and v.failed == ["log_gaps"]
    out = json.loads(json.dumps(v.to_json(), allow_nan=False))
    assert out["results"]["log_gaps"]["valid"] is False


def test_examples_are_bounded_and_every_kind_shows() -> None:
    sc = Scenario()
    sc.read(G1, [msg(s, f"m{s}") for s in range(1, 200, 2)])  # 99 gaps
    sc.read(G2, [msg(2, "x"), msg(1, "y")])  # one of each of two other kinds
    r = check_log_gaps(sc.events)
    assert r.counts["gap"] == 99 and len(r.examples) == 10
    assert {"gap", "out_of_order", "missing_prefix"} <= kinds(r)


# --- a simulated correct server ----------------------------------------------------------------

CHANNELS = (G1, G2, P12)
GROUP_OF = {G1: 0, G2: 1, P12: 0}
NODES = (1, 2, 3)
DEFINITE = (3, 9, 16, 23, 24)
RETRY_CODES = (10, 17, 18)
ACTIONS = (
    "send",
    "send",
    "retry",
    "finish",
    "finish",
    "read",
    "recv",
    "reconnect",
    "floor",
    "nemesis",
)
PLANS = ("ok", "ok", "info_commit", "info_lost", "fail", "retry_code")


@dataclass
class PendingSend:
    op: PendingOp[SendValue]
    plan: str
    commit_at_finish: bool


@dataclass
class PendingRead:
    op: PendingOp[ReadValue]
    snapshot: list[ReadMessage] | None
    """The log as of the invocation, or None to read it at completion: both are linearizable."""
    page: int | None


class Sim:
    """A correct server (dedupe, contiguous seqs, linearizable reads, monotonic push) and the
    clients that record its history, driven by hypothesis one action at a time.

    Ops overlap: a send or read is invoked in one step and finished in a later one. A send
    commits at its invocation or at its finish (or, left open at the end, maybe never), and
    ``info``/retry-code outcomes may or may not have committed."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.clock = FakeClock()
        self.rec = MemoryHistory(self.clock)
        self.logs: dict[str, list[ReadMessage]] = {c: [] for c in CHANNELS}
        self.dedupe: dict[tuple[str, str, str], ReadMessage] = {}
        self.next_id = 5000
        self.n_cmn = 0
        self.pending: list[PendingSend | PendingRead] = []
        self.retryable: list[SendValue] = []
        self.retry_channel: dict[str, str] = {}
        self.sessions = {"c2": "c2-s0"}
        self.n_sessions = 0
        self.delivered: dict[tuple[str, str], int] = {}
        self.floors: dict[tuple[str, str], int] = {}
        self.fault_open = False

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def pick(self, items: Sequence[Any]) -> Any:
        return items[self.draw(st.integers(0, len(items) - 1))]

    def tick(self) -> None:
        self.clock.t += self.pick([0.0005, 0.01, 0.2, 1.5])

    def commit(self, channel: str, uid: str, cmn: str) -> ReadMessage:
        key = (channel, uid, cmn)
        if key not in self.dedupe:
            log = self.logs[channel]
            self.next_id += 1
            log.append(ReadMessage(len(log) + 1, self.next_id, cmn, uid, ph(cmn)))
            self.dedupe[key] = log[-1]
            # One's own message is read: the sender's floor moves up to it.
            self.floors[(uid, channel)] = max(self.floors.get((uid, channel), 0), len(log))
        return self.dedupe[key]

    def run(self) -> list[Event]:
        self.prelude()
        for _ in range(self.draw(st.integers(0, 40))):
            self.tick()
            getattr(self, "do_" + self.pick(ACTIONS))()
        self.wind_down()
        return self.rec.events

    def prelude(self) -> None:
        """Gives every mutation something to bite on: two acked messages, a definitely failed
        send, a session that received both, a read floor."""
        for cmn in ("pa", "pb"):
            op = self.rec.invoke("send", "c1", SendValue(cmn, "u1", ph(cmn), group=0), channel=G1)
            self.tick()
            m = self.commit(G1, "u1", cmn)
            op.ok(message_seq=m.seq, message_id=m.message_id, reason=1)
        self.rec.invoke("send", "c1", SendValue("pf", "u1", ph("pf")), channel=G1).fail(reason=3)
        for m in self.logs[G1]:
            self.deliver("c2", G1, m)
        self.floors[("u2", G1)] = 1
        self.rec.observe("read_floor", "r1", FloorValue("u2", floor=1, head=2), channel=G1)

    def do_send(self, retry: bool = False) -> None:
        if retry and self.retryable:
            old = self.retryable.pop(self.draw(st.integers(0, len(self.retryable) - 1)))
            ch, uid, cmn, attempt = (
                self.retry_channel[old.client_msg_no],
                old.from_uid,
                old.client_msg_no,
                old.attempt + 1,
            )
        else:
            ch, uid = self.pick(CHANNELS), self.pick(("u1", "u2", "u3"))
            self.n_cmn += 1
            cmn, attempt = f"{uid}-{self.n_cmn}", 1
        plan = self.pick(PLANS)
        value = SendValue(cmn, uid, ph(cmn), attempt=attempt, group=GROUP_OF[ch])
        op = self.rec.invoke("send", f"c-{uid}", value, channel=ch, node=self.pick(NODES))
        self.retry_channel[cmn] = ch
        commits = plan in ("ok", "info_commit") or (
            plan == "retry_code" and self.draw(st.booleans())
        )
        at_finish = commits and self.draw(st.booleans())
        if commits and not at_finish:
            self.commit(ch, uid, cmn)
        self.pending.append(PendingSend(op, plan, at_finish))

    def do_retry(self) -> None:
        self.do_send(retry=True)

    def do_finish(self, p: PendingSend | PendingRead | None = None) -> None:
        if p is None:
            if not self.pending:
                return
            p = self.pending.pop(self.draw(st.integers(0, len(self.pending) - 1)))
        if isinstance(p, PendingRead):
            self.finish_read(p)
            return
        v, ch = p.op.value, p.op.invoke.channel
        assert ch is not None
        if p.commit_at_finish:
            self.commit(ch, v.from_uid, v.client_msg_no)
        if p.plan == "ok":
            m = self.dedupe[(ch, v.from_uid, v.client_msg_no)]
            p.op.ok(message_seq=m.seq, message_id=m.message_id, reason=1)
            return
        if p.plan == "fail":
            p.op.fail(reason=self.pick(DEFINITE))
            return
        if p.plan == "retry_code":
            p.op.fail(reason=self.pick(RETRY_CODES))
        else:
            p.op.info(error="timeout")
        self.retryable.append(v)

    def finish_read(self, p: PendingRead) -> None:
        ch = p.op.invoke.channel
        assert ch is not None
        log = p.snapshot if p.snapshot is not None else list(self.logs[ch])
        got = log[p.op.value.start_seq - 1 :]
        if p.page is not None and p.page < len(got):
            p.op.ok(messages=tuple(got[: p.page]), complete=False)
        else:
            p.op.ok(messages=tuple(got), complete=True, head=len(log))

    def do_read(self) -> None:
        ch = self.pick(CHANNELS)
        start = self.draw(st.integers(1, len(self.logs[ch]) + 2))
        op = self.rec.invoke(
            "read", "r1", ReadValue(start_seq=start), channel=ch, node=self.pick(NODES)
        )
        snapshot = list(self.logs[ch]) if self.draw(st.booleans()) else None
        self.pending.append(
            PendingRead(op, snapshot, self.draw(st.one_of(st.none(), st.integers(1, 3))))
        )

    def deliver(self, proc: str, ch: str, m: ReadMessage, with_hash: bool = True) -> None:
        session = self.sessions[proc]
        value = RecvValue(
            session,
            m.seq,
            m.message_id,
            m.client_msg_no,
            m.from_uid,
            m.payload_hash if with_hash else None,
        )
        self.rec.observe("recv", proc, value, channel=ch, node=1)
        self.delivered[(session, ch)] = m.seq

    def do_recv(self) -> None:
        proc, ch = self.pick(sorted(self.sessions)), self.pick(CHANNELS)
        last, log = self.delivered.get((self.sessions[proc], ch), 0), self.logs[ch]
        if last < len(log):
            seq = self.draw(st.integers(last + 1, len(log)))  # a push may skip; sync backfills
            self.deliver(proc, ch, log[seq - 1], self.draw(st.booleans()))

    def do_reconnect(self) -> None:
        proc = self.pick(("c2", "c3"))
        self.n_sessions += 1
        self.sessions[proc] = f"{proc}-s{self.n_sessions}"

    def do_floor(self) -> None:
        uid, ch = self.pick(("u2", "u3")), self.pick(CHANNELS)
        head, now = len(self.logs[ch]), self.floors.get((uid, ch), 0)
        new = self.draw(st.integers(now, max(now, head)))
        self.floors[(uid, ch)] = new
        self.rec.observe("read_floor", "r1", FloorValue(uid, floor=new, head=head), channel=ch)
        self.rec.observe("unread", "r1", FloorValue(uid, unread=head - new, head=head), channel=ch)

    def do_nemesis(self) -> None:
        action = "stop" if self.fault_open else "start"
        self.rec.invoke("nemesis", "nemesis", NemesisValue("partition", action, ("2",))).ok()
        self.fault_open = not self.fault_open

    def wind_down(self) -> None:
        """Everything completes but perhaps one op, left open (indeterminate); the fault heals;
        every node answers a final read of every channel and a digest of every group."""
        open_op = self.pending.pop() if self.pending and self.draw(st.booleans()) else None
        for p in self.pending:
            self.tick()
            self.do_finish(p)
        if (
            isinstance(open_op, PendingSend)
            and open_op.commit_at_finish
            and self.draw(st.booleans())
        ):
            v, ch = open_op.op.value, open_op.op.invoke.channel
            assert ch is not None
            self.commit(ch, v.from_uid, v.client_msg_no)  # committed, but the client never heard
        if self.fault_open:
            self.do_nemesis()
        self.tick()
        for ch in CHANNELS:
            log = self.logs[ch]
            for node in NODES:
                op = self.rec.invoke("final_read", "final", ReadValue(), channel=ch, node=node)
                op.ok(messages=tuple(log), complete=True, head=len(log))
        for group in sorted(set(GROUP_OF.values())):
            digests = {
                c: ChannelDigest(len(log), _log_hash(log))
                for c, log in self.logs.items()
                if GROUP_OF[c] == group and log
            }
            for node in NODES:
                self.rec.observe(
                    "replica_digest", "runner", DigestValue(node, group, digests), node=node
                )


def simulate(data: st.DataObject) -> list[Event]:
    return Sim(data).run()


def _log_hash(log: list[ReadMessage]) -> str:
    return hashlib.sha256(repr([m.to_json() for m in log]).encode()).hexdigest()[:16]


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.data())
def test_histories_of_a_correct_server_pass_every_checker(data: st.DataObject) -> None:
    events = simulate(data)
    verdict = check_all(events)
    assert verdict.valid, json.dumps(
        {n: verdict.results[n].to_json() for n in verdict.failed}, indent=1
    )
    # The history survives a trip through JSONL unchanged.
    lines = [json.dumps(e.to_json()) + "\n" for e in events]
    assert parse_history(lines) == events


# --- single mutations, each caught by the checker it targets --------------------------------------


Mutation = Callable[[list[Event], st.DataObject], list[Event]]


def _pick(data: st.DataObject, items: list[Any], label: str) -> Any:
    assert items, label
    return items[data.draw(st.integers(0, len(items) - 1), label=label)]


def _with_messages(e: Event, messages: list[ReadMessage]) -> Event:
    assert isinstance(e.value, ReadValue)
    return dataclasses.replace(e, value=dataclasses.replace(e.value, messages=tuple(messages)))


def _finals(events: list[Event], channel: str | None = None, min_len: int = 1) -> list[Event]:
    return [
        e
        for e in events
        if e.f == "final_read"
        and e.type == "ok"
        and (channel is None or e.channel == channel)
        and isinstance(e.value, ReadValue)
        and len(e.value.messages) >= min_len
    ]


def _append(events: list[Event], *one_op: Event) -> list[Event]:
    """Append one new op (an observation, or an invoke and its completion) after everything."""
    op = max(e.op for e in events) + 1
    mono = max(e.mono for e in events) + 1.0
    out = list(events)
    for i, e in enumerate(one_op):
        out.append(dataclasses.replace(e, op=op, mono=mono + i, index=len(out)))
    return out


def drop_acked_from_final(events: list[Event], data: st.DataObject) -> list[Event]:
    ack = _pick(data, [e for e in events if e.f == "send" and e.type == "ok"], "ack")
    final = _pick(data, _finals(events, ack.channel), "final")
    kept = [m for m in final.value.messages if m.client_msg_no != ack.value.client_msg_no]
    events[final.index] = _with_messages(final, kept)
    return events


def duplicate_in_final(events: list[Event], data: st.DataObject) -> list[Event]:
    final = _pick(data, _finals(events), "final")
    ms = list(final.value.messages)
    copy = dataclasses.replace(_pick(data, ms, "m"), seq=ms[-1].seq + 1, message_id=999_999)
    events[final.index] = _with_messages(final, [*ms, copy])
    return events


def tamper_payload(events: list[Event], data: st.DataObject) -> list[Event]:
    final = _pick(data, _finals(events), "final")
    ms = list(final.value.messages)
    i = data.draw(st.integers(0, len(ms) - 1))
    ms[i] = dataclasses.replace(ms[i], payload_hash="tampered")
    events[final.index] = _with_messages(final, ms)
    return events


def hole_in_final(events: list[Event], data: st.DataObject) -> list[Event]:
    final = _pick(data, _finals(events, min_len=2), "final")
    ms = list(final.value.messages)
    del ms[data.draw(st.integers(0, len(ms) - 2))]
    events[final.index] = _with_messages(final, ms)
    return events


def show_failed_send(events: list[Event], data: st.DataObject) -> list[Event]:
    # Only keys whose every attempt failed for sure: a retry-code "fail" or an attempt that never
    # completed may have committed, and then the message is allowed to show.
    outcomes: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    sends = [op for op in pair_ops(events) if op.f == "send"]
    for op in sends:
        outcomes[(op.channel, op.value.from_uid, op.value.client_msg_no)].add(send_outcome(op))
    f = _pick(
        data,
        [
            op
            for op in sends
            if outcomes[(op.channel, op.value.from_uid, op.value.client_msg_no)] == {"fail"}
        ],
        "failed",
    )
    final = _pick(data, _finals(events, f.channel, min_len=0), "final")
    ms = list(final.value.messages)
    phantom = ReadMessage(
        len(ms) + 1, 888_888, f.value.client_msg_no, f.value.from_uid, f.value.payload_hash
    )
    events[final.index] = _with_messages(final, [*ms, phantom])
    return events


def swap_recvs(events: list[Event], data: st.DataObject) -> list[Event]:
    streams: dict[tuple[Any, ...], list[Event]] = defaultdict(list)
    for e in events:
        if e.f == "recv":
            streams[(e.process, e.value.session, e.channel)].append(e)
    stream = _pick(data, [s for s in streams.values() if len(s) >= 2], "stream")
    i = data.draw(st.integers(0, len(stream) - 2))
    j = data.draw(st.integers(i + 1, len(stream) - 1))
    a, b = stream[i], stream[j]
    events[a.index] = dataclasses.replace(a, value=b.value)
    events[b.index] = dataclasses.replace(b, value=a.value)
    return events


def diverge_replica(events: list[Event], data: st.DataObject) -> list[Event]:
    d = _pick(data, [e for e in events if e.f == "replica_digest" and e.value.channels], "digest")
    channels = dict(d.value.channels)
    c = _pick(data, sorted(channels), "channel")
    channels[c] = dataclasses.replace(channels[c], hash="split-brain")
    events[d.index] = dataclasses.replace(d, value=dataclasses.replace(d.value, channels=channels))
    return events


def stale_prefix_read(events: list[Event], data: st.DataObject) -> list[Event]:
    ack = _pick(data, [e for e in events if e.f == "send" and e.type == "ok"], "ack")
    final = _finals(events, ack.channel, min_len=0)[0]
    prefix = tuple(final.value.messages[: ack.value.message_seq - 1])
    value = ReadValue(start_seq=1, messages=prefix, complete=True, head=len(prefix))
    invoke = Event("invoke", "read", "stale", 0, ReadValue(), channel=ack.channel, node=2)
    return _append(events, invoke, dataclasses.replace(invoke, type="ok", value=value))


def floor_goes_back(events: list[Event], data: st.DataObject) -> list[Event]:
    obs = Event("ok", "read_floor", "r9", 0, FloorValue("u2", floor=0), channel=G1)
    return _append(events, obs)


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "drop_acked_from_final": (drop_acked_from_final, "lost_acked"),
    "duplicate_in_final": (duplicate_in_final, "duplicates"),
    "tamper_payload": (tamper_payload, "inconsistent_seq"),
    "hole_in_final": (hole_in_final, "log_gaps"),
    "show_failed_send": (show_failed_send, "aborted_read"),
    "swap_recvs": (swap_recvs, "nonmonotonic_delivery"),
    "diverge_replica": (diverge_replica, "replica_divergence"),
    "stale_prefix_read": (stale_prefix_read, "stale_read"),
    "floor_goes_back": (floor_goes_back, "read_floor_regression"),
}


@FAST
@given(st.data(), st.sampled_from(sorted(MUTATIONS)))
def test_a_single_mutation_is_caught_by_its_checker(data: st.DataObject, name: str) -> None:
    events = simulate(data)
    mutate, checker = MUTATIONS[name]
    mutated = mutate(list(events), data)
    result = CHECKERS[checker](mutated)
    assert not result.valid, f"{name} slipped past {checker}"
    assert result.examples and result.name == checker
