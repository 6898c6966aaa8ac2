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
from pysyncobj.node import Node
from pysyncobj.syncobj import _RAFT_STATE

from cluster.raft import pysyncobj_seam as seam
from cluster.raft.snapshot import CheckpointSnapshots, _Transfer
from node.groups.machine import GroupMachine
from node.storage import Store
from tests.unit.test_cluster_raft import Replica, _ports

T = TypeVar("T")
NO_OP = b"\x01"  # pysyncobj's no-op command: applying it changes no state


class Follower:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.raft = replica.raft
        self.answers: list[dict[str, Any]] = []
        self.leaders: list[Any] = self.on_driver(
            lambda: sorted(seam.other_nodes(self.raft), key=lambda n: n.id)
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
        self.on_driver(lambda: self.raft.on_message(self.leaders[leader], message))
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
        self.on_driver(self.raft.apply_log_entries)

    def log(self) -> list[tuple[int, int]]:
        return self.on_driver(lambda: [(e[1], e[2]) for e in seam.journal(self.raft)])

    def commit_index(self) -> int:
        return self.on_driver(lambda: seam.commit_index(self.raft))

    def applied(self) -> int:
        return self.on_driver(lambda: seam.last_applied(self.raft))


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


def test_held_entries_are_skipped_and_the_rest_appended_or_replaced(follower: Follower) -> None:
    """A message that overlaps the log: what is held with the same term is skipped, what
    follows is appended, and a conflict (with an unapplied entry) replaces the tail from it."""
    follower.append(0, 1, (1, 0), [(2, 1), (3, 1), (4, 1)], commit=1)
    answer = follower.append(0, 1, (1, 0), [(i, 1) for i in range(2, 7)], commit=1)
    assert answer is not None and answer["success"] and answer["next_node_idx"] == 7
    assert follower.log() == [(1, 0)] + [(i, 1) for i in range(2, 7)]
    # A new leader of term 2 that holds 2-3 but not 4-6: its 4 and 5 replace them.
    answer = follower.append(1, 2, (1, 0), [(2, 1), (3, 1), (4, 2), (5, 2)], commit=5)
    assert answer is not None and answer["success"] and answer["next_node_idx"] == 6
    assert follower.log() == [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert follower.commit_index() == 5


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
    and the leader counted this replica's unchanged, unchecked log end as matched; it had also
    written the damaged bytes over the replica's own snapshot. Now the answer is a reset to the
    commit index, which makes the leader send the snapshot again, and the local snapshot
    stays."""
    follower.append(0, 1, (1, 0), [(2, 1), (3, 1)], commit=1)
    dump = follower.raft._SyncObj__serializer.dump_path
    dump.write_bytes(b"this replica's own snapshot")
    answer = follower.receive(0, 1, commit_index=50, serialized=(b"not a snapshot", True, True))
    assert answer == {"type": "next_node_idx", "next_node_idx": 2, "reset": True, "success": False}
    assert follower.commit_index() == 1
    assert follower.applied() == 1
    assert dump.read_bytes() == b"this replica's own snapshot"


def snapshot_transfer(follower: Follower, tmp_path: Path, index: int, term: int) -> bytes:
    """What a leader streams for its snapshot at ``index``: a tar of its (empty) store's
    checkpoint and the Raft metadata, built as a leader builds it."""
    store = Store(tmp_path / "leader-db")
    try:
        snapshots = CheckpointSnapshots(GroupMachine(1, store), tmp_path / "leader-snapshots")
        raft = follower.raft
        members = follower.on_driver(lambda: {raft._SyncObj__selfNode, *raft._SyncObj__otherNodes})
        dump = tmp_path / "leader.dump"
        snapshots.serialize(str(dump), ((NO_OP, index, term), (NO_OP, index - 1, term), members))
        meta, pinned = snapshots.pin(str(dump), "transfer.d")
        snapshots.build_transfer(meta, pinned, tmp_path / "transfer.tar")
    finally:
        store.close()
    return (tmp_path / "transfer.tar").read_bytes()


def test_a_snapshot_older_than_what_was_applied_changes_nothing(
    follower: Follower, tmp_path: Path
) -> None:
    """The leader sent entries 2-12, which this replica applied and answered; then a late reset
    reply sent the leader back to a snapshot at 6. pysyncobj cleared the journal to 5-6 and set
    its applied index back to 6: entries the leader had counted were gone, and the state
    machine would skip 7-12 when they came again. Now nothing changes, and the answer is the
    commit index."""
    follower.append(0, 1, (1, 0), [(i, 1) for i in range(2, 13)], commit=12)
    follower.apply()
    tar = snapshot_transfer(follower, tmp_path, 6, 1)
    answer = follower.receive(0, 1, commit_index=12, serialized=(tar, True, True))
    assert answer == {"type": "next_node_idx", "next_node_idx": 13, "reset": False, "success": True}
    assert follower.log() == [(1, 0)] + [(i, 1) for i in range(2, 13)]
    assert follower.applied() == 12 and follower.commit_index() == 12
    assert follower.replica.machine.installs == 0


def test_a_newer_snapshot_keeps_the_entries_after_it(follower: Follower, tmp_path: Path) -> None:
    """This replica holds 2-12 but applied only 3 when the snapshot at 6 arrives, with the same
    entries at 5 and 6. It installs the snapshot and keeps 7-12 (Raft's rule for a snapshot
    whose last entry the follower holds); pysyncobj cleared them. The answer is 7: what lies
    past it was not vouched for by this message."""
    follower.append(0, 1, (1, 0), [(i, 1) for i in range(2, 13)], commit=3)
    follower.apply()
    assert follower.applied() == 3
    tar = snapshot_transfer(follower, tmp_path, 6, 1)
    answer = follower.receive(0, 1, commit_index=12, serialized=(tar, True, True))
    assert answer == {"type": "next_node_idx", "next_node_idx": 7, "reset": False, "success": True}
    assert follower.log() == [(i, 1) for i in range(5, 13)]
    assert follower.applied() == 6 and follower.commit_index() == 6
    assert follower.replica.machine.installs == 1


def test_a_message_without_a_previous_index_gets_a_reset_to_the_commit_index(
    follower: Follower,
) -> None:
    """pysyncobj's leader sends ``prevLogIdx: None`` when its next index for a member is past
    its own log; pysyncobj's follower then failed on it every round, without even resetting
    its election timer, and stood for election against a healthy leader."""
    follower.append(0, 1, (1, 0), [(2, 1), (3, 1)], commit=2)
    answer = follower.append(1, 2, (None, None), [], commit=9)  # type: ignore[arg-type]
    assert answer == {"type": "next_node_idx", "next_node_idx": 3, "reset": True, "success": False}
    assert follower.on_driver(lambda: follower.raft._getLeader()) is follower.leaders[1]


def test_a_leader_waiting_for_a_transfer_sends_one_message_per_round(follower: Follower) -> None:
    """As a leader: while a member's snapshot transfer is being built, pysyncobj's append round
    asked for it again and again, sending an empty snapshot message each time, for the whole
    round: the driver thread, shared by every group of the node, was busy throughout."""
    raft = follower.raft
    member = follower.leaders[0]
    transmitter = raft._SyncObj__serializer
    transmitter._transfers[member] = _Transfer()  # being built

    def round_() -> int:
        raft._SyncObj__raftState = _RAFT_STATE.LEADER
        raft._SyncObj__connectedNodes.add(member)
        raft._SyncObj__raftNextIndex[member] = 1
        raft._SyncObj__raftMatchIndex[member] = 0
        before = len(follower.answers)
        raft._SyncObj__sendAppendEntries()
        assert raft._SyncObj__raftNextIndex[member] == 1  # still waiting for its snapshot
        raft._SyncObj__raftState = _RAFT_STATE.FOLLOWER
        return len(follower.answers) - before

    sent = follower.on_driver(round_)
    assert sent == 1, sent


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


def test_the_published_view_follows_the_replica(follower: Follower) -> None:
    """Other threads read a group through its ``GroupView``, republished after every tick."""
    raft = follower.raft
    follower.append(1, 2, (1, 0), [(2, 2), (3, 2)], commit=3)
    follower.on_driver(lambda: raft._onTick(0.0))
    view = raft.view
    assert view.leader == follower.leaders[1].address and not view.is_leader
    assert (view.term, view.commit_index, view.leader_commit) == (2, 3, 3)
    assert set(view.members) == {n.address for n in follower.leaders}


def test_a_read_only_member_and_a_failed_tick_leave_the_view_current(follower: Follower) -> None:
    """A read-only member (pysyncobj's "readonly" handshake) is a node without an address; as
    a leader's follower it broke every tick's view, and a tick that raised left the view as it
    was: a node that lost its leadership went on reading "leader"."""
    raft = follower.raft

    def lead_with_a_reader() -> None:
        raft._SyncObj__onBecomeLeader()
        raft._SyncObj__raftMatchIndex[Node("reader-1")] = 1
        raft._onTick(0.0)

    follower.on_driver(lead_with_a_reader)
    assert raft.view.is_leader
    assert ("reader-1", 1) in raft.view.matches

    def failing_tick(_wait: float) -> None:
        raft._SyncObj__raftState = _RAFT_STATE.FOLLOWER  # it stepped down, then failed
        raise OSError("no space left on device")

    def tick() -> None:
        raft._tick = failing_tick
        try:
            raft._onTick(0.0)
        finally:
            del raft._tick

    with pytest.raises(OSError):
        follower.on_driver(tick)
    assert not raft.view.is_leader
