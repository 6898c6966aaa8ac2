"""The flood workload's compact history and its checkers, on synthetic histories: a clean one
passes every property, and each anomaly (a lost ack, a duplicate, a reordering, a retry with
another seq, a refused message that shows up, a phantom, replicas that disagree, a RECV going
backwards, the shape ``--sabotage ack-without-commit`` leaves) fails the property it breaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.checkers.base import CheckResult
from chaos.checkers.flood import (
    FLOOD_SAFETY,
    RecvSummary,
    SendTable,
    check_flood,
    check_flood_run,
    tabulate,
)
from chaos.floodlog import (
    FAIL,
    INFO,
    OK,
    PHANTOM,
    Attempt,
    FinalRead,
    client_msg_no,
    message_key,
    parse_key,
    payload,
    read_attempts,
    read_final_reads,
    uid_of,
    write_final_read,
)
from chaos.history import ChannelDigest, DigestValue, MemoryHistory, NemesisValue


def mid(sender: int, number: int) -> int:
    return 1_000_000 + sender * 1000 + number


def acked(sender: int, number: int, seq: int, channel: int = 0, attempt: int = 1) -> Attempt:
    return Attempt(sender, number, channel, attempt, OK, 1, 1, seq, mid(sender, number), 1.0, 1.1)


def read_of(node: int, channel: int, log: list[tuple[int, int, int]]) -> FinalRead:
    """A complete final read holding (seq, sender, number) in the given order."""
    r = FinalRead(node=node, channel=channel, complete=True)
    for seq, sender, number in log:
        r.add(seq, message_key(sender, number), mid(sender, number), True)
    return r


CLEAN_ACKS = [acked(0, 1, 1), acked(1, 1, 2), acked(0, 2, 3), acked(1, 2, 4)]
CLEAN_LOG = [(1, 0, 1), (2, 1, 1), (3, 0, 2), (4, 1, 2)]


def check(
    attempts: list[Attempt],
    reads: list[FinalRead],
    recvs: list[RecvSummary] | None = None,
) -> dict[str, CheckResult]:
    recvs = [RecvSummary(recvs=10)] if recvs is None else recvs
    return check_flood(tabulate(attempts), reads, recvs)


def failed(results: dict[str, CheckResult]) -> set[str]:
    return {name for name, r in results.items() if r.status == "invalid"}


def kinds(result: CheckResult) -> set[str]:
    return {e["kind"] for e in result.examples}


def clean_reads() -> list[FinalRead]:
    return [read_of(n, 0, CLEAN_LOG) for n in (1, 2, 3)]


# --- names and files ----------------------------------------------------------------------------


def test_message_names_round_trip_and_foreign_names_are_phantoms() -> None:
    key = message_key(7, 123)
    assert parse_key(uid_of(7), client_msg_no(7, 123)) == key
    assert payload(7, 123, 64) != payload(7, 124, 64)
    assert len(payload(7, 123, 64)) == 64
    for from_uid, cmn in [
        ("fl8", "fl7-123"),  # another sender's name
        ("fl7", "x7-123"),
        ("fl7", "fl7-"),
        ("fl7", "fl7-12a"),
        ("fl7", f"fl7-{1 << 32}"),
        ("u1", "u1-5"),
    ]:
        assert parse_key(from_uid, cmn) == PHANTOM, cmn


def test_attempt_rows_and_final_read_blocks_round_trip(tmp_path: Path) -> None:
    rows = [acked(3, 9, 17), Attempt(3, 10, 2, 2, INFO, 4, 0, t_send=5.0, t_done=17.0)]
    path = tmp_path / "sends-w0.bin"
    path.write_bytes(b"".join(a.pack() for a in rows) + rows[0].pack()[:20])  # a torn tail
    assert list(read_attempts(path)) == rows
    reads = [read_of(2, 0, CLEAN_LOG), FinalRead(node=2, channel=1)]
    reads[1].phantoms.append({"seq": 1, "from_uid": "x", "client_msg_no": "y"})
    reads[1].add(1, PHANTOM, 5, False)
    with (tmp_path / "final-n2.bin").open("wb") as fh:
        for r in reads:
            write_final_read(fh, r)
    back = list(read_final_reads(tmp_path / "final-n2.bin"))
    assert [(r.node, r.channel, r.complete, r.phantoms) for r in back] == [
        (r.node, r.channel, r.complete, r.phantoms) for r in reads
    ]
    assert all(a.same_log(b) for a, b in zip(back, reads, strict=True))


# --- the checkers -------------------------------------------------------------------------------


def test_a_clean_history_passes_every_property_with_data() -> None:
    retry = acked(0, 2, 3, attempt=2)  # a retry after an unknown outcome: the original seq
    unknown = Attempt(0, 2, 0, 1, INFO, 2)
    refused = Attempt(1, 3, 0, 1, FAIL, 2, 22)
    maybe = Attempt(1, 4, 0, 1, INFO, 2)  # never acked, never stored: fine
    results = check([*CLEAN_ACKS, unknown, retry, refused, maybe], clean_reads())
    assert failed(results) == set()
    assert all(r.status == "valid" for r in results.values()), results
    assert results["lost_acked"].counts["acked"] == 4
    assert results["lost_acked"].counts["final_read_messages"] == 12
    assert results["duplicates"].counts["repeat_acks_checked"] == 1
    assert results["aborted_read"].counts["definitely_failed"] == 1


def test_an_info_send_that_was_stored_is_fine() -> None:
    attempts = [*CLEAN_ACKS, Attempt(0, 3, 0, 1, INFO, 1)]
    reads = [read_of(n, 0, [*CLEAN_LOG, (5, 0, 3)]) for n in (1, 2)]
    assert failed(check(attempts, reads)) == set()


def test_a_lost_ack_is_caught() -> None:
    log = [entry for entry in CLEAN_LOG if entry != (3, 0, 2)]
    log = [(i + 1, s, n) for i, (_, s, n) in enumerate(log)]  # renumbered: no gap to see
    results = check(CLEAN_ACKS, [read_of(n, 0, log) for n in (1, 2)])
    assert failed(results) == {"lost_acked"}
    assert results["lost_acked"].counts["lost"] == 2  # (0, 2) missing, (1, 2) moved
    assert kinds(results["lost_acked"]) == {"missing", "moved"}


def test_a_message_missing_from_one_replica_only_is_caught() -> None:
    short = read_of(3, 0, CLEAN_LOG[:3])
    results = check(CLEAN_ACKS, [read_of(1, 0, CLEAN_LOG), short])
    assert "lost_acked" in failed(results)
    assert results["lost_acked"].examples[0]["nodes"] == [3]


def test_a_duplicate_is_caught() -> None:
    log = [*CLEAN_LOG, (5, 0, 1)]  # message (0, 1) stored again at seq 5, under a new id
    reads = [read_of(n, 0, log) for n in (1, 2)]
    for r in reads:
        r.message_id[4] = 77
    results = check(CLEAN_ACKS, reads)
    assert failed(results) == {"duplicates"}
    assert kinds(results["duplicates"]) == {"stored_twice"}
    assert results["duplicates"].examples[0]["seqs"] == [1, 5]


def test_a_retry_answered_with_another_seq_is_caught() -> None:
    attempts = [*CLEAN_ACKS, acked(0, 1, 5, attempt=2)]
    results = check(attempts, clean_reads())
    assert "duplicates" in failed(results)
    assert results["duplicates"].counts["acks_disagree"] == 1


def test_a_reordering_is_caught() -> None:
    log = [(1, 0, 1), (3, 0, 2), (2, 1, 1), (4, 1, 2)]  # seqs out of order
    results = check(CLEAN_ACKS, [read_of(n, 0, log) for n in (1, 2)])
    assert "log_gaps" in failed(results)
    assert kinds(results["log_gaps"]) == {"out_of_order"}
    swapped = [(1, 0, 1), (2, 0, 2), (3, 1, 1), (4, 1, 2)]  # in order, messages swapped
    results = check(CLEAN_ACKS, [read_of(n, 0, swapped) for n in (1, 2)])
    assert failed(results) == {"lost_acked"}
    assert kinds(results["lost_acked"]) == {"moved"}


def test_a_gap_is_caught() -> None:
    log = [(1, 0, 1), (2, 1, 1), (4, 1, 2)]
    results = check(CLEAN_ACKS[:2] + CLEAN_ACKS[3:], [read_of(1, 0, log)])
    assert failed(results) == {"log_gaps"}
    assert kinds(results["log_gaps"]) == {"gap"}


def test_a_refused_message_that_shows_up_is_caught() -> None:
    attempts = [*CLEAN_ACKS, Attempt(1, 3, 0, 1, FAIL, 2, 22)]
    reads = [read_of(n, 0, [*CLEAN_LOG, (5, 1, 3)]) for n in (1, 2)]
    results = check(attempts, reads)
    assert failed(results) == {"aborted_read"}
    assert kinds(results["aborted_read"]) == {"failed_send_visible"}


def test_a_phantom_and_a_message_in_the_wrong_channel_are_caught() -> None:
    read = read_of(1, 0, CLEAN_LOG)
    read.add(5, PHANTOM, 99, False)
    read.phantoms.append({"seq": 5, "from_uid": "intruder", "client_msg_no": "x"})
    read.add(6, message_key(5, 1), mid(5, 1), True)  # a name the flood uses, never sent
    results = check(CLEAN_ACKS, [read])
    assert failed(results) == {"aborted_read"}
    assert kinds(results["aborted_read"]) == {"never_sent"}
    assert results["aborted_read"].counts["never_sent"] == 2
    cross = read_of(1, 1, [(1, 9, 1), (2, 0, 1)])  # (0, 1) was sent to channel 0
    results = check([acked(0, 1, 1, channel=0), acked(9, 1, 1, channel=1)], [cross])
    assert kinds(results["aborted_read"]) == {"wrong_channel"}


def test_a_payload_that_is_not_the_senders_is_caught() -> None:
    bad = read_of(1, 0, CLEAN_LOG)
    bad.payload_ok[2] = 0
    results = check(CLEAN_ACKS, [bad])
    assert failed(results) == {"inconsistent_seq"}
    assert kinds(results["inconsistent_seq"]) == {"payload_differs"}


def test_replicas_holding_different_messages_at_one_seq_are_caught() -> None:
    other = read_of(2, 0, [(1, 0, 1), (2, 1, 1), (3, 0, 2), (4, 7, 7)])
    results = check(CLEAN_ACKS, [read_of(1, 0, CLEAN_LOG), other])
    assert "inconsistent_seq" in failed(results)
    assert "reads_differ" in kinds(results["inconsistent_seq"])
    assert "lost_acked" in failed(results)  # node 2 lacks (1, 2)


def test_a_reused_message_id_and_a_wrong_ack_id_are_caught() -> None:
    r = read_of(1, 0, CLEAN_LOG)
    r.message_id[1] = r.message_id[0]
    results = check(CLEAN_ACKS, [r])
    assert kinds(results["inconsistent_seq"]) == {"message_id_reused", "ack_id_differs"}


def test_the_shape_of_ack_without_commit_is_caught() -> None:
    """``--sabotage ack-without-commit``: a leader answers success without proposing; the seq
    it gave is then taken by the next real message. The acked message is nowhere, and the
    seq it was given holds another message."""
    attempts = [acked(0, 1, 1), acked(1, 1, 2), acked(0, 2, 2)]  # (1, 1)'s ack was fake
    reads = [read_of(n, 0, [(1, 0, 1), (2, 0, 2)]) for n in (1, 2, 3)]
    results = check(attempts, reads)
    assert failed(results) == {"lost_acked"}
    assert results["lost_acked"].examples[0]["kind"] == "missing"
    assert results["lost_acked"].examples[0]["client_msg_no"] == "fl1-1"


def test_incomplete_or_absent_final_reads_leave_acks_unverified() -> None:
    partial = read_of(1, 0, CLEAN_LOG)
    partial.complete = False
    results = check(CLEAN_ACKS, [partial])
    assert failed(results) == {"lost_acked", "log_gaps"}
    assert results["lost_acked"].counts["unverified"] == 4
    results = check(CLEAN_ACKS, [])
    assert results["lost_acked"].counts["unverified"] == 4
    assert results["log_gaps"].status == "no data"


def test_recv_order_and_the_recv_sample_are_checked() -> None:
    backwards = RecvSummary(
        recvs=5, regressions=1, examples=[{"kind": "backwards", "after": 3, "seq": 2}]
    )
    results = check(CLEAN_ACKS, clean_reads(), [backwards])
    assert failed(results) == {"nonmonotonic_delivery"}
    sample = RecvSummary(
        recvs=5,
        sample=[[0, 2, message_key(1, 1), mid(1, 1)], [0, 3, message_key(1, 1), mid(1, 1)]],
    )
    results = check(CLEAN_ACKS, clean_reads(), [sample])
    assert failed(results) == {"inconsistent_seq"}
    assert results["inconsistent_seq"].counts["recv_differs"] == 1
    assert results["inconsistent_seq"].counts["recv_sample_checked"] == 2
    assert check(CLEAN_ACKS, clean_reads(), [])["nonmonotonic_delivery"].status == "no data"


def test_a_run_folder_is_checked_with_the_digests_of_the_json_history(tmp_path: Path) -> None:
    (tmp_path / "sends-w0.bin").write_bytes(b"".join(a.pack() for a in CLEAN_ACKS))
    (tmp_path / "recv-w0.json").write_text('{"counts": {"recvs": 3, "recv_regressions": 0}}')
    for n in (1, 2):
        with (tmp_path / f"final-n{n}.bin").open("wb") as fh:
            write_final_read(fh, read_of(n, 0, CLEAN_LOG))
    h = MemoryHistory()
    h.invoke("nemesis", "nemesis", NemesisValue("kill", "stop")).ok()
    for n in (1, 2):
        value = DigestValue(node=n, group=1, channels={"2:fc0": ChannelDigest(4, "abc")})
        h.invoke("replica_digest", "digest", value).ok()
    verdict, load = check_flood_run(tmp_path, h.events)
    assert verdict.status == "valid", verdict.to_json()
    assert set(verdict.results) == set(FLOOD_SAFETY)
    assert load["acked_messages"] == 4
    verdict, _ = check_flood_run(tmp_path, [])
    assert verdict.status == "inconclusive"
    assert verdict.missing == ["replica_divergence"]


def test_the_send_table_keeps_the_first_ack_and_counts_outcomes() -> None:
    table = SendTable()
    for a in [Attempt(0, 1, 3, 1, INFO, 1), acked(0, 1, 7, channel=3, attempt=2)]:
        table.add(a)
    assert table.acked == {message_key(0, 1): 7}
    assert table.channel_of(message_key(0, 1)) == 3
    assert table.attempts == {"ok": 1, "fail": 0, "info": 1}
    assert table.load()["acked_messages"] == 1


@pytest.mark.parametrize("n", [0, 1, 3])
def test_order_check_accepts_every_contiguous_log(n: int) -> None:
    log = [(i + 1, 0, i + 1) for i in range(n)]
    attempts = [acked(0, i + 1, i + 1) for i in range(n)]
    assert "log_gaps" not in failed(check(attempts, [read_of(1, 0, log)]))
