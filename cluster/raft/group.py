"""A Raft group that replicates opaque command bytes into a state machine.

The state machine keeps its state outside pysyncobj (RocksDB for slot groups) and records the
Raft index of every command it applies, atomically with the command's effects, so that a
journal replay after a restart skips what is already applied.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pysyncobj import SyncObjConf, SyncObjException, replicated

from cluster.listen import ListenError, bind_problem, os_error_behind
from cluster.ratelog import RateLimitedLog

from . import pysyncobj_seam as seam
from .follower import AppendGuard, trim_journal_to
from .snapshot import CheckpointSnapshots, CheckpointTransmitter, install_checkpoint_transmitter


def _not_a_bind_failure(record: logging.LogRecord) -> bool:
    # pysyncobj logs a failed bind with its traceback before raising; ReplicatedGroup raises a
    # ListenError naming the address instead, and the node reports that in one line.
    return record.getMessage() != "failed to perform initialization"


logging.getLogger("pysyncobj.syncobj").addFilter(_not_a_bind_failure)


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes) -> bytes:
        """Apply one committed command (deterministically) and return its result."""
        ...

    def applied_index(self) -> int:
        """The Raft index of the last command whose effects are stored."""
        ...

    def checkpoint(self, path: str) -> None:
        """Write a consistent copy of the state to a new directory ``path``."""
        ...

    def install(self, path: str) -> None:
        """Replace the state by the checkpoint in ``path`` (taken by ``checkpoint``)."""
        ...


@dataclass(frozen=True, slots=True)
class GroupView:
    """A replica's Raft state as of the driver's last tick of it: what threads other than the
    driver's read (pysyncobj's fields change under them on the driver thread, and a read of
    several of them at once would mix two moments). Replaced whole, never changed."""

    is_leader: bool = False
    leader: str | None = None
    """The address of the leader this replica knows, or None."""
    term: int = 0
    commit_index: int = 0
    applied_index: int = 0
    """Raft's: election no-ops included, which never reach the state machine."""
    leader_commit: int = 0
    """The leader's commit index as of its last message (this replica's own on a leader)."""
    members: tuple[str, ...] = ()
    """The other members' addresses."""
    matches: tuple[tuple[str, int], ...] = ()
    """On a leader: each follower's address and its highest replicated index."""
    has_quorum: bool = False
    diverged_refusals: int = 0
    """AppendEntries refused because they would replace entries this replica applied."""


class ReplicatedGroup(seam.SyncObjHooks):
    def __init__(
        self,
        self_addr: str,
        partners: list[str],
        conf: SyncObjConf,
        machine: StateMachine,
        snapshots: CheckpointSnapshots | None = None,
    ) -> None:
        # Set before SyncObj.__init__: pysyncobj treats attributes that exist by then as
        # configuration, not replicated state.
        self._machine = machine
        self._snapshots = snapshots
        self.on_leader_news: Callable[[], None] | None = None
        """Called on the driver thread when this replica learns of a different leader (or of
        none): whoever waits to retry a request to the old one may go at once."""
        self._known_leader: Any = None
        self._vote_term = -1
        self._voters: set[str] = set()
        self.view = GroupView()
        """This replica's state for other threads, republished after every tick."""
        self._label = self_addr
        self._append_guard = AppendGuard(self, self_addr)
        self._parked: dict[Any, int] = {}
        try:
            super().__init__(self_addr, partners, conf)
        except SyncObjException as e:
            if e.errorCode != "BindError":
                raise
            # make_conf allows one bind attempt, so this is a port taken or an address not on
            # this machine; pysyncobj keeps the reason only as the exception's context.
            address = conf.bindAddress or self_addr
            cause = os_error_behind(e) or bind_problem(address) or "the port could not be bound"
            with contextlib.suppress(Exception):
                seam.destroy_now(self)  # its journal and sockets; the object is never used
            raise ListenError("Raft", address, cause) from None
        if snapshots is not None:
            install_checkpoint_transmitter(self, snapshots).not_ready = self._park
        seam.store_commit_index_on_change(seam.journal(self))
        self.view = self._current_view()

    def apply_log_entries(self) -> bool:
        # With appendEntriesUseBatch off, pysyncobj follows every apply with an AppendEntries
        # round whose only news is the commit index: four more Raft messages per batch in a
        # three-node group. New entries still go out at once (pysyncobj sends them when it
        # queues them); the commit index reaches followers with the next entries or the next
        # heartbeat. Followers then apply up to one heartbeat later, which nothing waits for:
        # answers, fan-out and reads all come from the leader.
        super().apply_log_entries()
        return False

    def on_tick(self, wait_s: float) -> None:
        try:
            self._tick(wait_s)
        finally:
            # Even after a tick that failed (a disk error in an apply, say): pysyncobj's state
            # goes on changing in message handling, and a view left behind would, for one,
            # keep saying "leader". Published before the leader news, so that whoever the
            # news wakes reads the new leader.
            self._publish_view()
            self._check_leader()

    def _tick(self, wait_s: float) -> None:
        term, was_follower = seam.term(self), seam.is_follower(self)
        super().on_tick(wait_s)
        if was_follower and seam.is_candidate(self) and seam.term(self) != term:
            # This tick started an election. pysyncobj gives a candidate a whole election
            # timeout to collect its votes, but votes take milliseconds; what a long round
            # costs is a split vote, when both followers of a dead leader stand within the
            # same few milliseconds: another 0.5-1.0 s without a leader (ADR 010). So the first
            # round after following a leader is a random fraction of the minimum timeout. A
            # candidate whose first round failed gets whole timeouts again, so slow votes cost
            # at most one short round. (A node knocked back to follower, say by a vote request
            # of a higher term that it refused, starts with a short round again: in a minority
            # partition its term rises a little faster than pysyncobj's would, and that is all.)
            seam.set_election_timeout(self, first_round_s(seam.conf(self).raftMinTimeout))

    def _publish_view(self) -> None:
        try:
            self.view = self._current_view()
        except Exception:
            VIEW_FAILURES.exception(self._label, "publishing a raft group's view failed")

    def _current_view(self) -> GroupView:
        leader = seam.leader(self)
        is_leader = seam.is_leader(self)
        commit = seam.commit_index(self)
        leader_commit = seam.leader_commit_index(self)
        matches = seam.match_indexes(self) if is_leader else {}
        return GroupView(
            is_leader=is_leader,
            leader=None if leader is None else _address(leader),
            term=seam.term(self),
            commit_index=commit,
            applied_index=seam.last_applied(self),
            leader_commit=commit if leader_commit is None else leader_commit,
            members=tuple(sorted(_address(n) for n in seam.other_nodes(self))),
            matches=tuple((_address(n), int(i)) for n, i in matches.items()),
            has_quorum=seam.has_quorum(self),
            diverged_refusals=self._append_guard.refused,
        )

    def on_message(self, node: Any, message: Any) -> None:
        if message["type"] == "response_vote" and not self._first_vote_from(node, message):
            return
        if message["type"] == "append_entries" and message["term"] >= seam.term(self):
            self._append_guard.on_append_entries(node, message)
            return
        super().on_message(node, message)

    def load_snapshot(self, clear_journal: bool) -> None:
        serializer = seam.serializer(self)
        if clear_journal and isinstance(serializer, CheckpointTransmitter):
            self._append_guard.load_received(serializer)  # a snapshot a leader sent
            return
        if not clear_journal:
            keep_journal_after_snapshot(self)
        super().load_snapshot(clear_journal)

    def send_append_entries(self) -> None:
        try:
            super().send_append_entries()
        finally:
            next_index = seam.next_indexes(self)
            for node, index in self._parked.items():
                if node in next_index:
                    next_index[node] = index
            self._parked.clear()

    def _park(self, node: Any) -> None:
        # A member waits for a snapshot transfer that is still being built. pysyncobj's append
        # round would go on asking for it, sending an empty snapshot message each time, for the
        # whole round (``appendEntriesPeriod``): the driver thread, which every group of the
        # node shares, spent the build busy. Pretending for the rest of this round that the
        # member is up to date sends it one message (its heartbeat) and ends the loop.
        next_index = seam.next_indexes(self)
        self._parked.setdefault(node, next_index[node])
        next_index[node] = seam.last_log_index(self) + 1

    def answer_leader(self, node: Any, reset: bool, next_index: Any, success: bool) -> None:
        self._append_guard.answer(node, reset, next_index, success)

    @property
    def diverged_refusals(self) -> int:
        """AppendEntries refused because they conflict with entries this replica applied."""
        return self._append_guard.refused

    def _first_vote_from(self, node: Any, message: Any) -> bool:
        # pysyncobj counts every vote answer of the current term without asking who sent it.
        # Since a candidate may ask a member twice (``on_node_connected``), a second
        # answer from the same member in the same term must not count: in a group of five,
        # it could make a majority that does not exist. pysyncobj's voters answer once per
        # term, but this does not rely on it.
        term = int(message["term"])
        if term < self._vote_term:
            return True  # an older term's answer, which pysyncobj ignores
        if term > self._vote_term:
            self._vote_term, self._voters = term, set()
        if node.id in self._voters:
            return False
        self._voters.add(node.id)
        return True

    def _check_leader(self) -> None:
        # After each tick, not in pysyncobj's own leader-changed hook, which runs before it
        # records the new leader. Not per message either: the driver ticks a group right
        # after the poll that brought its messages, so one check per tick sees every change.
        leader = seam.leader(self)
        if leader is not self._known_leader:
            self._known_leader = leader
            if self.on_leader_news is not None:
                self.on_leader_news()

    def on_node_connected(self, node: Any) -> None:
        super().on_node_connected(node)
        if seam.is_candidate(self) and node in seam.other_nodes(self):
            # Ask again for a vote that may have been lost. Followers never talk to each
            # other, and pysyncobj drops a link that has not been read from for
            # ``connectionTimeout`` at the next send on it, discarding the message: a
            # candidate's first vote request after its leader died was nearly always lost,
            # so every failover waited for a second election round (ADR 010). The link is
            # back moments later, and this is the moment to repeat the request. A node that
            # already voted in this term ignores it, and a second answer would not count
            # (``_first_vote_from``).
            conn = seam.open_connection(self, node)
            if conn is not None:
                conn.send(
                    {
                        "type": "request_vote",
                        "term": seam.term(self),
                        "last_log_index": seam.last_log_index(self),
                        "last_log_term": seam.last_log_term(self),
                    }
                )

    def on_node_disconnected(self, node: Any) -> None:
        super().on_node_disconnected(node)
        # The chunks of a snapshot transfer in flight on the lost link are gone. pysyncobj
        # cancels the transfer only if its next append round finds the member disconnected;
        # a link that is back by then would get the rest of the chunks after a gap, and the
        # follower a damaged tar. Starting over on the next link costs one transfer.
        seam.serializer(self).cancelTransmisstion(node)

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, command: bytes) -> bytes:
        # pysyncobj advances raftLastApplied after the call, so this command's index is +1.
        index = seam.last_applied(self) + 1
        return self._machine.apply(index, command)


def _address(node: Any) -> str:
    # A read-only member (pysyncobj's "readonly" handshake) is a bare Node without an address.
    return str(getattr(node, "address", None) or getattr(node, "id", node))


VIEW_FAILURES = RateLimitedLog(logging.getLogger("raftchat.raft"), 10.0)


def keep_journal_after_snapshot(group: Any) -> None:
    """At start-up, before pysyncobj loads its snapshot: trim the journal to the snapshot if a
    crash came between the two steps of a log compaction.

    pysyncobj writes the snapshot (the dump file) on one tick and deletes the journal's entries
    up to it on the next. A process that died in between finds a journal that still starts
    before the snapshot; pysyncobj then clears the whole journal and keeps only the snapshot's
    two entries, dropping the entries after it that this replica had acknowledged to its
    leader. If the journal holds the snapshot's two entries, this does the second step instead
    (as pysyncobj would have), and every entry after the snapshot stays."""
    try:
        data = seam.serializer(group).deserialize()
    except Exception:
        return  # no snapshot, or one pysyncobj cannot load either: it says so itself
    journal = seam.journal(group)
    first = int(journal[0][1]) if len(journal) else None
    if trim_journal_to(group, data[2], data[1]) and first != int(data[2][1]):
        logging.getLogger("raftchat.raft").warning(
            "finished a log compaction cut short by a crash; kept the journal after it",
            extra={"fields": {"snapshot_index": int(data[1][1])}},
        )


FIRST_ROUND = (0.2, 0.5)
"""A candidate's first election round after following a leader, as fractions of
``raftMinTimeout`` (0.1-0.25 s at the default 0.5 s)."""


def first_round_s(min_timeout_s: float) -> float:
    low, high = FIRST_ROUND
    return min_timeout_s * random.uniform(low, high)
