"""A replica restarted after a crash keeps the Raft entries it had acknowledged, even when the
crash cut a log compaction in two (``cluster.raft.group.keep_journal_after_snapshot``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.unit.test_cluster_raft import WAIT_S, Replica, _ports, commit_all, send


def _log(replica: Replica) -> list[tuple[int, int]]:
    raft = replica.raft
    return replica.driver.call(lambda: [(e[1], e[2]) for e in raft._SyncObj__raftLog]).result(10)


def _lone_leader(replica: Replica) -> None:
    deadline = time.monotonic() + WAIT_S
    while not replica.is_leader():  # a lone group elects itself; elections signal nothing
        assert time.monotonic() < deadline, "the lone replica never led"
        time.sleep(0.02)


def test_a_crash_between_snapshot_and_journal_trim_keeps_the_entries_after_the_snapshot(
    tmp_path: Path,
) -> None:
    """pysyncobj writes a snapshot on one tick and trims the journal on the next. Here the
    process 'dies' in between: the snapshot is written with the driver already stopped. At the
    restart pysyncobj cleared the journal down to the snapshot's two entries, dropping the
    eight after it, all applied and acknowledged; now they stay, and nothing is applied
    twice."""
    address = f"127.0.89.1:{next(_ports)}"
    replica = Replica(tmp_path, address, [])
    _lone_leader(replica)
    commit_all(replica, [send(i) for i in range(12)])
    entries = _log(replica)
    last = entries[-1][0]
    assert last >= 13  # the election no-op, then twelve sends
    snapshot_at = last - 8
    raft = replica.raft
    applied = replica.store.applied_index()
    replica.driver.stop()  # the group's last tick: nothing trims the journal after this

    journal: Any = raft._SyncObj__raftLog
    first = journal[0][1]
    pair = (journal[snapshot_at - first], journal[snapshot_at - 1 - first])
    cluster = {raft._SyncObj__selfNode}
    raft._SyncObj__serializer.serialize((None, *pair, cluster), snapshot_at - 1)
    replica.store.close()

    again = Replica(tmp_path, address, [])
    try:
        _lone_leader(again)
        kept = _log(again)
        assert [i for i, _ in kept][:2] == [snapshot_at - 1, snapshot_at]
        assert (
            kept[: len(entries) - (snapshot_at - 1 - first)] == entries[snapshot_at - 1 - first :]
        )
        assert kept[-1][0] > last  # and the new term's no-op after them
        assert again.store.applied_index() >= applied
        commit_all(again, [send(100)])  # it goes on
    finally:
        again.close()
