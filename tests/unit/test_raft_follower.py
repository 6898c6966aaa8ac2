"""A follower keeps Raft's guarantees where pysyncobj's handling of AppendEntries does not
(``cluster.raft.follower``): it commits only entries a leader vouched for, deletes entries only
at a conflict, refuses to overwrite what it applied, and asks again for a snapshot it could not
load.

One replica on its own driver, whose partners never start: the tests play its leaders, feeding
it AppendEntries on its driver thread as its transport would, and read its log, its commit
index and its answers (the transport's ``send``, the one part replaced here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cluster.raft.snapshot import _Transfer
from tests.unit.test_cluster_raft import Replica, _ports

T = TypeVar("T")
NO_OP = b"\x01"  # pysyncobj's no-op command: applying it changes no state


class Follower:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.raft = replica.raft
        self.answers: list[dict[str, Any]] = []
        self.leaders: list[Any] = self.on_driver(
            lambda: sorted(self.raft._SyncObj__otherNodes, key=lambda n: n.id)
        )

        def record(node: Any, message: dict[str, Any]) -> bool:
            self.answers.append(message)
            return True

        self.raft._SyncObj__transport.send = record

    def on_driver(self, fn: Callable[[], T]) -> T:
        return self.replica.driver.call(fn).result(10)

    def receive(self, leader: int, term: int, **fields: Any) -> dict[str, Any] | None:
        """Deliver an AppendEntries from ``leaders[leader]``; the answer it got, if any."""
        before = len(self.answers)
        message = {"type": "append_entries", "term": term, **fields}
        self.on_driver(lambda: self.raft._SyncObj__onMessageReceived(self.leaders[leader], message))
        return self.answers[-1] if len(self.answers) > before else None

    def append(
        self,
        leader: int,
        term: int,
        prev: tuple[int, int],
        entries: list[tuple[int, int]],
        commit: int,
    ) -> dict[str, Any] | None:
        """AppendEntries of no-op entries given as (index, term)."""
        return self.receive(
            leader,
            term,
            commit_index=commit,
            prevLogIdx=prev[0],
            prevLogTerm=prev[1],
            entries=[(NO_OP, i, t) for i, t in entries],
        )

    def apply(self) -> None:
        self.on_driver(self.raft._SyncObj__applyLogEntries)

    def log(self) -> list[tuple[int, int]]:
        return self.on_driver(lambda: [(e[1], e[2]) for e in self.raft._SyncObj__raftLog])

    def commit_index(self) -> int:
        return int(self.on_driver(lambda: self.raft._SyncObj__raftCommitIndex))

    def applied(self) -> int:
        return int(self.on_driver(lambda: self.raft._SyncObj__raftLastApplied))


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[Follower]:
    base = next(_ports)
    addresses = [f"127.0.89.{n}:{base}" for n in range(1, 4)]
    replica = Replica(tmp_path, addresses[0], addresses[1:])
    try:
        yield Follower(replica)
    finally:
        replica.close()


def test_a_snapshot_message_commits_no_entry_the_leader_did_not_vouch_for(
    follower: Follower,
) -> None:
    """A deposed leader's entries 2-4 (term 1) reached this replica only. The new leader (term
    2) is building a snapshot for it: its messages carry its commit index, 10, and no entries.
    pysyncobj committed 2-4 on them (the end of the replica's own log), and applied them."""
    assert follower.log() == [(1, 0)]
    follower.append(0, 1, (1, 0), [(2, 1), (3, 1), (4, 1)], commit=1)
    assert follower.commit_index() == 1
    follower.receive(1, 2, commit_index=10, serialized=None)
    assert follower.commit_index() == 1
    follower.apply()
    assert follower.applied() == 1
    # The leader's commit index is still known (readiness measures lag against it).
    assert follower.on_driver(lambda: follower.raft._SyncObj__leaderCommitIndex) == 10


def test_a_late_append_entries_deletes_nothing_the_leader_already_counted(
    follower: Follower,
) -> None:
    """The leader sent entries 2-6, then, after a reset, 2-3 again; the second message arrives
    after the first was applied. pysyncobj deleted 4-6, applied ones included, though the
    leader had counted them as this replica's (its match index)."""
    answer = follower.append(0, 1, (1, 0), [(i, 1) for i in range(2, 7)], commit=6)
    assert answer == {"type": "next_node_idx", "next_node_idx": 7, "reset": False, "success": True}
    follower.apply()
    assert follower.applied() == 6

    late = follower.append(0, 1, (1, 0), [(2, 1), (3, 1)], commit=6)
    assert follower.log() == [(1, 0)] + [(i, 1) for i in range(2, 7)]
    assert late == {"type": "next_node_idx", "next_node_idx": 4, "reset": False, "success": True}
    assert follower.commit_index() == 6
    # A heartbeat behind the log's end vouches for less, and deletes nothing either.
    beat = follower.append(0, 1, (3, 1), [], commit=6)
    assert beat is not None and beat["next_node_idx"] == 4 and beat["success"]
    assert len(follower.log()) == 6


def test_a_follower_commits_only_up_to_what_a_message_vouches_for(follower: Follower) -> None:
    """Entries 2-5 came from a leader of term 1 that committed only 1. The next leader (term
    2) holds 2-3 as well: its heartbeat vouches for 3, so 3 is the most this replica may
    commit, even with the leader's commit index at 9; 4-5 stay until an entry conflicts with
    them (Raft deletes at a conflict only; pysyncobj deleted them at once)."""
    follower.append(0, 1, (1, 0), [(i, 1) for i in range(2, 6)], commit=1)
    answer = follower.append(1, 2, (3, 1), [], commit=9)
    assert answer is not None and answer["success"] and answer["next_node_idx"] == 4
    assert follower.commit_index() == 3
    assert follower.log() == [(1, 0)] + [(i, 1) for i in range(2, 6)]
    # Its next entry conflicts at 4: the unvouched tail goes, the new entry is appended.
    follower.append(1, 2, (3, 1), [(4, 2)], commit=9)
    assert follower.log() == [(1, 0), (2, 1), (3, 1), (4, 2)]
    assert follower.commit_index() == 4


def test_an_entry_that_conflicts_with_an_applied_one_is_refused(
    follower: Follower, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries 2-4 of term 1 are applied here; a leader of term 2 sends other entries for 2-3.
    Raft never lets that happen to committed entries, so the state machine has diverged: the
    replica refuses to overwrite what it applied and says so, where pysyncobj replaced the
    entries and went on with a state machine that matched neither log."""
    follower.append(0, 1, (1, 0), [(2, 1), (3, 1), (4, 1)], commit=4)
    follower.apply()
    assert follower.applied() == 4
    with caplog.at_level(logging.CRITICAL, logger="raftchat.raft.follower"):
        answer = follower.append(1, 2, (1, 0), [(2, 2), (3, 2)], commit=3)
    assert answer is None
    assert follower.log() == [(1, 0), (2, 1), (3, 1), (4, 1)]
    assert follower.raft.diverged_refusals == 1
    assert any("diverged" in r.getMessage() for r in caplog.records)
    # It still follows the new leader (no election of its own), in the new term.
    assert follower.on_driver(lambda: follower.raft._getLeader()) is follower.leaders[1]
    assert follower.on_driver(follower.raft._getTerm) == 2


def test_a_snapshot_that_cannot_be_loaded_is_asked_for_again(follower: Follower) -> None:
    """A transfer that arrives damaged: pysyncobj logged the failed load and answered success,
    and the leader counted this replica's unchanged log end as matched. Now the answer is a
    reset, which makes the leader send the snapshot again."""
    follower.append(0, 1, (1, 0), [(2, 1), (3, 1)], commit=1)
    answer = follower.receive(0, 1, commit_index=50, serialized=(b"not a snapshot", True, True))
    assert answer is not None
    assert answer["success"] is False and answer["reset"] is True
    assert follower.commit_index() == 1
    assert follower.applied() == 1


def test_a_lost_link_ends_the_snapshot_transfer_on_it(follower: Follower) -> None:
    """As a leader: the chunks already sent on a link that broke are lost, so the transfer to
    that member starts over on the next link instead of going on after a gap (which gave the
    follower a damaged tar when the link came back within one append round)."""
    raft = follower.raft
    member = follower.leaders[0]
    transmitter = raft._SyncObj__serializer
    transmitter._transfers[member] = _Transfer()
    follower.on_driver(lambda: raft._SyncObj__onNodeDisconnected(member))
    assert member not in transmitter._transfers
