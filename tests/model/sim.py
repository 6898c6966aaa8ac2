"""An in-process, deterministic model of a raftchat cluster, for the stateful model tests.

What is real and what is simulated:

* real: every replica applies its committed entries through ``GroupMachine`` into its own
  RocksDB ``Store`` (seqs, message ids, dedupe, permissions); routing decisions come from a real
  ``Router`` per node (``leader_of``, leader hints, ``_rotate_guess``, ``status_failure``,
  ``_leader_status``) and the pure retry decisions of ``node.route_failures``
  (``may_have_committed``, ``rotate_after``, ``give_up_failure``, the reason codes); send
  slots are the router's
  ``SubmitSlot``/``submit_start``; proposal errors map to failure kinds by ``LocalGroup``'s
  table; the placement is ``initial_placement`` and channels go to groups by ``slot_of``.
* simulated: a Raft per slot group that follows pysyncobj where raftchat depends on it (terms,
  votes only for an up-to-date log, a no-op on election, commit by a majority of the leader's
  own term, a leader stepping down without a majority for ``leader_fallback_s``, a command
  queue that waits for a leader and forwards commands a follower holds to the leader, commit
  callbacks answered SUCCESS/DISCARDED by term, LEADER_CHANGED for forwarded ones); the group
  pipeline, the forwarders, the ForwardSends handler and ``Router.begin_send``/``_retrying``
  (async code on trio's clock) as explicit state machines on a fake clock (milliseconds, timers
  from ``RaftTiming`` and ``RouterSettings``; the clock a leader stamps on its commands is
  skewed per node); a network that holds every message until a test delivers, reorders, drops
  or partitions it.
* left out: snapshots and log compaction, membership changes, fan-out to sessions, metadata
  and reads (the group channels are created by a committed entry at boot), power loss (a crash
  is a process crash: the journal and the store keep what was written, the WAL fsync is not
  modelled, and the store stays open while the node's memory is rebuilt on restart).
* simplified: election timeouts are a fixed function of (node, term) instead of random (the
  ``campaign`` rule fires one at any time); a leader sends no heartbeat to a follower that
  still has one in flight; a "healthy" network has no latency; the ForwardSends handler waits
  for all its items until one deadline (the real one waits item after item); the pipeline's
  commit window is one instant of the model; a call to a crashed node fails at once.

Everything is deterministic: no wall clock, no randomness, ordered containers only.
"""

from __future__ import annotations

import collections
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON

from chaos.history import DEFINITE_FAIL_REASONS
from cluster.placement import NodeAddress, initial_placement
from cluster.raft.conf import RaftTiming
from node.forwarding import SubmitSlot, submit_start
from node.groups.local import _DEFINITE, ProposalError
from node.groups.machine import GroupMachine
from node.ids import EPOCH_MS
from node.route_failures import (
    REASON_OF_FAILURE,
    give_up_failure,
    may_have_committed,
    rotate_after,
)
from node.router import Router, RouterSettings
from node.storage import Store
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode

# --- the cluster being modelled --------------------------------------------------------------

NODE_IDS = (1, 2, 3, 4)
"""Four nodes, three replicas per group: every group has a node without a replica, so sends
reach leaders through hints and UNKNOWN_GROUP answers too, not only through local replicas."""
PLACEMENT = initial_placement([NodeAddress(n, f"n{n}") for n in NODE_IDS], 2, 3)

PERSON, GROUP = int(ChannelType.PERSON), int(ChannelType.GROUP)
CHANNELS: tuple[tuple[int, str], ...] = (
    (PERSON, "u1@u2"),
    (PERSON, "u1@u4"),
    (GROUP, "g1"),
    (GROUP, "g4"),
)
UIDS = ("u1", "u2", "u3")
SUBSCRIBERS = ["u1", "u2"]
"""Of the group channels: u3 is refused (3, SubscriberNotExist), a definite failure."""

CHANNELS_OF_GROUP = {
    g: [c for c in CHANNELS if PLACEMENT.group_of(c[1]) == g] for g in PLACEMENT.groups
}
assert all(
    any(t == GROUP for t, _ in chans) and any(t == PERSON for t, _ in chans)
    for chans in CHANNELS_OF_GROUP.values()
), "every group should own a person and a group channel"

DEFINITE_FAILURES = frozenset(DEFINITE_FAIL_REASONS | {int(ReasonCode.NODE_MATCH_ERROR)})
"""Answers that promise nothing was committed: permission and validation refusals, and 17
(docs/protocol.md: "no leader could be found ... nothing was committed")."""

# --- timing (milliseconds), from the real defaults --------------------------------------------

_TIMING = RaftTiming()
_ROUTING = RouterSettings(node_id=0, grpc_port=0)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


HEARTBEAT_MS = _ms(_TIMING.heartbeat_s)
ELECTION_MIN_MS = _ms(_TIMING.election_min_s)
ELECTION_MAX_MS = _ms(_TIMING.election_max_s)
FALLBACK_MS = _ms(_TIMING.leader_fallback_s)
FORWARD_TIMEOUT_MS = _ms(_ROUTING.forward_timeout_s)
PROPOSAL_TIMEOUT_MS = _ms(_ROUTING.proposal_timeout_s)
RPC_TIMEOUT_MS = _ms(_ROUTING.rpc_timeout_s)
SLOT_WAIT_MS = FORWARD_TIMEOUT_MS + 5000
"""``begin_send``/``_send_once`` wait ``forward_timeout_s + 5`` for a slot."""
BACKOFF_MS, MAX_BACKOFF_MS = 10, 200
MAX_IN_FLIGHT = 4
MAX_BATCH = 512
FORWARD_BATCH = 2048
CLOCK_BASE_MS = EPOCH_MS + 1_000_000_000
CLOCK_SKEW_MS = {1: 0, 2: -1500, 3: 700, 4: -3}
"""The nodes' wall clocks disagree: a new leader's clock may be behind the old one's."""


def election_timeout(node_id: int, term: int) -> int:
    """pysyncobj draws it at random in [min, max); here it is a fixed function of node and term,
    distinct for the nodes within a term (so split votes end), and tests force elections."""
    step = (ELECTION_MAX_MS - ELECTION_MIN_MS) // 5
    return ELECTION_MIN_MS + ((node_id * 2 + term) % 5) * step


# --- RocksDB stores, opened once ---------------------------------------------------------------


class StorePool:
    """Real stores, one directory per replica, opened once and emptied for every example
    (opening one costs tens of milliseconds here; emptying one costs microseconds)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="raftchat-model-"))
        self._stores: dict[str, Store] = {}

    def fresh(self, name: str) -> Store:
        store = self._stores.get(name)
        if store is None:
            store = self._stores[name] = Store(self.root / name)
            return store
        wb = store.batch()
        for cf_name, cf in store._cf.items():
            for key in list(cf.keys()):
                wb._delete(cf_name, bytes(key))
        store.write(wb)
        return store

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()
        shutil.rmtree(self.root, ignore_errors=True)


MachineFactory = Callable[[int, Store], GroupMachine]

# --- network ------------------------------------------------------------------------------------

Entry = tuple[int, bytes | None]
"""(term, command); None is a leader's election no-op, which never reaches the state machine."""


@dataclass(frozen=True)
class AppendEntries:
    group: int
    term: int
    leader: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True)
class AppendReply:
    group: int
    term: int
    success: bool
    match: int
    """On success the last index now known to match; on failure a hint where to resume."""


@dataclass(frozen=True)
class RequestVote:
    group: int
    term: int
    candidate: int
    last_index: int
    last_term: int


@dataclass(frozen=True)
class VoteReply:
    group: int
    term: int
    granted: bool


@dataclass(frozen=True)
class ApplyCommand:
    """pysyncobj's ``apply_command``: a follower hands a queued command to the leader."""

    group: int
    command: bytes
    request_id: int


@dataclass(frozen=True)
class ApplyCommandReply:
    group: int
    request_id: int
    error: int | None
    index: int = 0
    term: int = 0


@dataclass(frozen=True)
class ForwardCall:
    call_id: int
    request: bytes
    """A serialized ``ForwardSendsRequest``."""


@dataclass(frozen=True)
class ForwardReturn:
    call_id: int
    reply: bytes
    """A serialized ``ForwardSendsReply``."""


@dataclass
class Envelope:
    src: int
    dst: int
    dst_life: int
    """The destination's incarnation when sent: a restarted node has new connections."""
    body: Any


# --- the client's view: attempts ----------------------------------------------------------------


@dataclass
class Attempt:
    """One SEND as a client made it: the payload names the attempt, so the log shows which
    attempt of a ``client_msg_no`` committed."""

    id: int
    node: int
    channel_type: int
    channel_id: str
    from_uid: str
    client_msg_no: str
    sent_at: int
    reason: int | None = None
    """The SENDACK reason; None while unanswered (or never: ``lost``)."""
    message_id: int = 0
    message_seq: int = 0
    duplicate: bool = False
    lost: bool = False
    ack_floor: int = 0
    """On success: a store applied index at or above the entry that committed it."""

    @property
    def payload(self) -> bytes:
        return f"attempt-{self.id}".encode()

    @property
    def key(self) -> tuple[int, str, str, str]:
        return (self.channel_type, self.channel_id, self.from_uid, self.client_msg_no)

    @property
    def group(self) -> int:
        return PLACEMENT.group_of(self.channel_id)

    def outcome(self) -> str:
        if self.reason is None:
            return "lost" if self.lost else "pending"
        if self.reason == ReasonCode.SUCCESS:
            return f"ok seq={self.message_seq}" + (" dup" if self.duplicate else "")
        return f"reason {self.reason}"


# --- Raft (one replica of one group on one node) ------------------------------------------------

FOLLOWER, CANDIDATE, LEADER = "follower", "candidate", "leader"
Callback = Callable[[Any, int], None]


@dataclass
class Disk:
    """What survives a crash: pysyncobj's journal (term, vote, log, commit index) and the store."""

    store: Store
    term: int = 0
    voted_for: int | None = None
    log: list[Entry] = field(default_factory=list)
    commit: int = 0


class Replica:
    def __init__(self, node: Node, group: int, disk: Disk) -> None:
        self.node = node
        self.world = node.world
        self.group = group
        self.disk = disk
        self.members = PLACEMENT.replicas(group)
        self.peers = [n for n in self.members if n != node.id]
        self.machine = self.world.machine_factory(group, disk.store)
        self.role = FOLLOWER
        self.leader: int | None = None
        self.commit = disk.commit
        self.last_applied = 0  # replays the journal: the machine skips what its store has
        self.votes: set[int] = set()
        self.next_index: dict[int, int] = {}
        self.match_index: dict[int, int] = {}
        self.last_response: dict[int, int] = {}
        self.next_heartbeat = 0
        self.election_deadline = self.world.now + election_timeout(node.id, disk.term)
        # pysyncobj's command queue and the callbacks waiting on it
        self.queue: list[tuple[bytes, Callback | tuple[int, int]]] = []
        self.waiting_commit: dict[int, list[tuple[int, Callback]]] = {}
        self.waiting_reply: dict[int, Callback] = {}
        self.request_ids = 0

    # --- helpers

    @property
    def term(self) -> int:
        return self.disk.term

    @property
    def log(self) -> list[Entry]:
        return self.disk.log

    def last(self) -> tuple[int, int]:
        log = self.disk.log
        return (log[-1][0] if log else 0, len(log))

    def term_at(self, index: int) -> int:
        return self.disk.log[index - 1][0] if index > 0 else 0

    def majority(self) -> int:
        return len(self.members) // 2 + 1

    def send(self, dst: int, body: Any) -> None:
        self.world.send(self.node.id, dst, body)

    def set_leader(self, leader: int | None) -> None:
        if leader != self.leader:
            self.leader = leader
            self.world.touch()  # a queue waiting for a leader may move
            # pysyncobj's __onLeaderChanged: commands handed to a leader get LEADER_CHANGED.
            waiting, self.waiting_reply = self.waiting_reply, {}
            self.world.counts["leader changed callbacks"] += len(waiting)
            for request_id in sorted(waiting):
                waiting[request_id](None, FAIL_REASON.LEADER_CHANGED)

    def adopt_term(self, term: int) -> None:
        if term > self.disk.term:
            self.disk.term = term
            self.disk.voted_for = None
            if self.role != FOLLOWER:
                self.role = FOLLOWER
                self.election_deadline = self.world.now + election_timeout(self.node.id, term)
            self.set_leader(None)

    # --- timers

    def next_due(self) -> int:
        return self.next_heartbeat if self.role == LEADER else self.election_deadline

    def fire(self) -> None:
        now = self.world.now
        if self.role == LEADER:
            if now < self.next_heartbeat:
                return
            heard = 1 + sum(1 for p in self.peers if now - self.last_response[p] <= FALLBACK_MS)
            if heard < self.majority():
                self.step_down()
                return
            self.next_heartbeat = now + HEARTBEAT_MS
            for peer in self.peers:
                if not self.world.in_flight(self.node.id, peer, AppendEntries, self.group):
                    self.send_append(peer)
        elif now >= self.election_deadline:
            self.campaign()

    def step_down(self) -> None:
        self.role = FOLLOWER
        self.set_leader(None)
        self.election_deadline = self.world.now + election_timeout(self.node.id, self.term)

    def campaign(self) -> None:
        self.disk.term += 1
        self.disk.voted_for = self.node.id
        self.role = CANDIDATE
        self.set_leader(None)
        self.votes = {self.node.id}
        self.election_deadline = self.world.now + election_timeout(self.node.id, self.term)
        last_term, last_index = self.last()
        for peer in self.peers:
            self.send(peer, RequestVote(self.group, self.term, self.node.id, last_index, last_term))

    def become_leader(self, *, noop: bool = True) -> None:
        self.world.note_leader(self.group, self.term, self.node.id)
        self.role = LEADER
        self.set_leader(self.node.id)
        now = self.world.now
        if noop:
            self.disk.log.append((self.term, None))
        self.next_index = {p: len(self.log) + 1 for p in self.peers}
        self.match_index = {p: 0 for p in self.peers}
        self.last_response = {p: now for p in self.peers}
        self.next_heartbeat = now + HEARTBEAT_MS
        for peer in self.peers:
            self.send_append(peer)

    # --- replication

    def send_append(self, peer: int) -> None:
        prev = self.next_index[peer] - 1
        entries = tuple(self.log[prev:])
        self.send(
            peer,
            AppendEntries(
                self.group, self.term, self.node.id, prev, self.term_at(prev), entries, self.commit
            ),
        )

    def on_append(self, src: int, m: AppendEntries) -> None:
        if m.term < self.term:
            self.send(src, AppendReply(self.group, self.term, False, 0))
            return
        self.adopt_term(m.term)
        assert self.role != LEADER, f"two leaders in term {m.term} of group {self.group}"
        self.role = FOLLOWER
        self.set_leader(m.leader)
        self.election_deadline = self.world.now + election_timeout(self.node.id, self.term)
        log = self.disk.log
        if m.prev_index > len(log) or self.term_at(m.prev_index) != m.prev_term:
            hint = min(len(log), m.prev_index - 1)
            self.send(src, AppendReply(self.group, self.term, False, hint))
            return
        index = m.prev_index
        for entry in m.entries:
            index += 1
            if index <= len(log):
                if log[index - 1][0] == entry[0]:
                    continue
                # Only uncommitted entries of a deposed leader may go.
                assert index > self.commit, f"truncating committed index {index}"
                assert index > self.disk.store.applied_index(), f"truncating applied {index}"
                self.world.counts["truncated entries"] += len(log) - index + 1
                del log[index - 1 :]
            log.append(entry)
        last_new = m.prev_index + len(m.entries)
        if m.commit > self.commit:
            self.advance_commit(min(m.commit, last_new))
        self.send(src, AppendReply(self.group, self.term, True, last_new))

    def on_append_reply(self, src: int, m: AppendReply) -> None:
        if m.term > self.term:
            self.adopt_term(m.term)
            return
        if self.role != LEADER or m.term != self.term:
            return
        self.last_response[src] = self.world.now
        if m.success:
            self.match_index[src] = max(self.match_index[src], m.match)
            self.next_index[src] = max(self.next_index[src], self.match_index[src] + 1)
            for n in range(len(self.log), self.commit, -1):
                if self.term_at(n) != self.term:
                    break
                if 1 + sum(1 for p in self.peers if self.match_index[p] >= n) >= self.majority():
                    self.advance_commit(n)
                    break
            if self.next_index[src] <= len(self.log):
                self.send_append(src)
        else:
            self.next_index[src] = max(1, min(self.next_index[src] - 1, m.match + 1))
            self.send_append(src)

    def on_vote(self, src: int, m: RequestVote) -> None:
        self.adopt_term(m.term)
        last_term, last_index = self.last()
        granted = (
            m.term == self.term
            and self.disk.voted_for in (None, m.candidate)
            and (m.last_term, m.last_index) >= (last_term, last_index)
        )
        if granted:
            self.disk.voted_for = m.candidate
            self.election_deadline = self.world.now + election_timeout(self.node.id, self.term)
        self.send(src, VoteReply(self.group, self.term, granted))

    def on_vote_reply(self, src: int, m: VoteReply) -> None:
        if m.term > self.term:
            self.adopt_term(m.term)
            return
        if self.role == CANDIDATE and m.term == self.term and m.granted:
            self.votes.add(src)
            if len(self.votes) >= self.majority():
                self.become_leader()

    def advance_commit(self, index: int) -> None:
        if index <= self.commit:
            return
        self.commit = index
        self.world.note_committed(self.group, self.log[:index])
        self.apply_committed()

    def apply_committed(self) -> None:
        while self.last_applied < self.commit:
            index = self.last_applied + 1
            term, command = self.log[index - 1]
            result = self.machine.apply(index, command) if command is not None else None
            self.last_applied = index
            for waited_term, callback in self.waiting_commit.pop(index, []):
                if waited_term == term:
                    callback(result, FAIL_REASON.SUCCESS)
                else:
                    self.world.counts["discarded callbacks"] += 1
                    callback(None, FAIL_REASON.DISCARDED)
        self.disk.commit = max(self.disk.commit, self.commit)

    # --- commands (pysyncobj's apply / _checkCommandsToApply)

    def submit(self, command: bytes, callback: Callback) -> None:
        self.queue.append((command, callback))
        self.world.touch()

    def drain(self) -> bool:
        """Process the command queue as pysyncobj's tick does (commandsWaitLeader: wait while
        no leader is known)."""
        progressed = False
        while self.queue and self.leader is not None:
            command, callback = self.queue.pop(0)
            progressed = True
            remote = callback if isinstance(callback, tuple) else None
            if self.role == LEADER:
                index, term = len(self.log) + 1, self.term
                self.log.append((term, command))
                if remote is None:
                    assert not isinstance(callback, tuple)
                    self.waiting_commit.setdefault(index, []).append((term, callback))
                else:
                    self.send(
                        remote[0], ApplyCommandReply(self.group, remote[1], None, index, term)
                    )
                for peer in self.peers:
                    self.send_append(peer)
            elif remote is None:
                assert not isinstance(callback, tuple)
                self.request_ids += 1
                self.world.counts["commands handed to a leader"] += 1
                self.waiting_reply[self.request_ids] = callback
                self.send(self.leader, ApplyCommand(self.group, command, self.request_ids))
            else:
                reply = ApplyCommandReply(self.group, remote[1], FAIL_REASON.NOT_LEADER)
                self.send(remote[0], reply)
        return progressed

    def on_apply_command(self, src: int, m: ApplyCommand) -> None:
        self.queue.append((m.command, (src, m.request_id)))
        self.world.touch()

    def on_apply_command_reply(self, m: ApplyCommandReply) -> None:
        callback = self.waiting_reply.pop(m.request_id, None)
        if callback is None:
            return
        self.world.touch()
        if m.error is not None:
            callback(None, m.error)
        elif m.index <= self.last_applied:
            callback(None, FAIL_REASON.UNKNOWN_OUTCOME)
        else:
            self.waiting_commit.setdefault(m.index, []).append((m.term, callback))

    def receive(self, src: int, body: Any) -> None:
        if isinstance(body, AppendEntries):
            self.on_append(src, body)
        elif isinstance(body, AppendReply):
            self.on_append_reply(src, body)
        elif isinstance(body, RequestVote):
            self.on_vote(src, body)
        elif isinstance(body, VoteReply):
            self.on_vote_reply(src, body)
        elif isinstance(body, ApplyCommand):
            self.on_apply_command(src, body)
        elif isinstance(body, ApplyCommandReply):
            self.on_apply_command_reply(body)


class LocalView:
    """What ``Router`` reads of a ``LocalGroup``: leadership, from the simulated replica."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def is_leader(self) -> bool:
        return self.replica.role == LEADER

    def leader_id(self) -> int | None:
        return self.replica.leader


# --- the send path on a node ---------------------------------------------------------------------

Done = Callable[[pb.SendOutcome | None, ProposalError | None], None]


class Proposal:
    """``LocalGroup.propose_start`` + ``Proposal`` + ``GroupPipeline._complete`` for one batch."""

    def __init__(self, pipeline: Pipeline, batch: list[tuple[pb.SendItem, Done]]) -> None:
        self.pipeline = pipeline
        self.batch = batch
        self.deadline = pipeline.world.now + PROPOSAL_TIMEOUT_MS
        self.finished = False

    def callback(self, result: Any, error: int) -> None:
        if self.finished:
            return  # answered by the timeout already
        if error != FAIL_REASON.SUCCESS:
            self.fail(_DEFINITE.get(error, "unknown"))
            return
        outcomes = pb.SendBatchResult.FromString(bytes(result or b"")).outcomes
        if len(outcomes) != len(self.batch):
            self.fail("unknown")  # replayed command: not ours to answer
            return
        self.finish()
        for (_, done), outcome in zip(self.batch, outcomes, strict=True):
            done(outcome, None)

    def fail(self, kind: str) -> None:
        self.finish()
        for _, done in self.batch:
            done(None, ProposalError(kind))

    def finish(self) -> None:
        self.finished = True
        self.pipeline.in_flight.remove(self)
        self.pipeline.world.touch()


class Pipeline:
    """``GroupPipeline``: sends queued in one instant are one batch, proposed in order."""

    def __init__(self, node: Node, group: int) -> None:
        self.node = node
        self.world = node.world
        self.group = group
        self.queue: list[tuple[pb.SendItem, Done]] = []
        self.in_flight: list[Proposal] = []

    def submit_nowait(self, item: pb.SendItem, done: Done) -> None:
        self.queue.append((item, done))
        self.world.touch()

    def flush(self) -> bool:
        progressed = False
        while self.queue and len(self.in_flight) < MAX_IN_FLIGHT:
            progressed = True
            batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
            replica = self.node.replicas[self.group]
            if replica.role != LEADER:
                kind = "not_leader" if replica.leader is not None else "no_leader"
                for _, done in batch:
                    done(None, ProposalError(kind))
                continue
            command = pb.Command(
                time_ms=self.world.time_ms(self.node.id),
                send=pb.SendBatch(items=[i for i, _ in batch]),
            )
            proposal = Proposal(self, batch)
            self.in_flight.append(proposal)
            replica.submit(command.SerializeToString(), proposal.callback)
        return progressed

    def next_due(self) -> int | None:
        return min((p.deadline for p in self.in_flight), default=None)

    def fire(self) -> None:
        for proposal in list(self.in_flight):
            if proposal.deadline <= self.world.now:
                self.world.counts["proposal timeouts"] += 1
                proposal.fail("unknown")


class Forwarder:
    """``forwarding.Forwarder``: one ForwardSends call at a time per (leader, group)."""

    def __init__(self, node: Node, target: int, group: int) -> None:
        self.node = node
        self.world = node.world
        self.target = target
        self.group = group
        self.queue: list[tuple[pb.SendItem, SubmitSlot]] = []
        self.call: tuple[int, list[tuple[pb.SendItem, SubmitSlot]], int] | None = None

    def start(self, item: pb.SendItem) -> SubmitSlot:
        slot = SubmitSlot()
        self.queue.append((item, slot))
        self.world.touch()
        return slot

    def flush(self) -> bool:
        if self.call is not None or not self.queue:
            return False
        batch, self.queue = self.queue[:FORWARD_BATCH], self.queue[FORWARD_BATCH:]
        if not self.world.nodes[self.target].up:
            self.settle(batch, ["forward_failed"] * len(batch))  # connection refused
            return True
        call_id = self.world.new_call_id()
        request = pb.ForwardSendsRequest(group=self.group, items=[i for i, _ in batch])
        self.call = (call_id, batch, self.world.now + RPC_TIMEOUT_MS)
        self.node.calls[call_id] = self
        self.world.send(
            self.node.id, self.target, ForwardCall(call_id, request.SerializeToString())
        )
        return True

    def on_reply(self, call_id: int, raw: bytes) -> None:
        if self.call is None or self.call[0] != call_id:
            return
        batch = self.call[1]
        self.call = None
        reply = pb.ForwardSendsReply.FromString(raw)
        failure = self.node.router.status_failure(self.group, reply.status)
        results: list[pb.SendOutcome | str] = (
            [failure] * len(batch) if failure else [o.failure or o for o in reply.outcomes]
        )
        self.settle(batch, results)

    def next_due(self) -> int | None:
        return self.call[2] if self.call is not None else None

    def fire(self) -> None:
        if self.call is not None and self.call[2] <= self.world.now:
            batch = self.call[1]
            self.node.calls.pop(self.call[0], None)
            self.call = None
            self.world.counts["forward timeouts"] += 1
            self.settle(batch, ["forward_failed"] * len(batch))  # deadline exceeded

    def settle(self, batch: list[tuple[pb.SendItem, SubmitSlot]], results: list[Any]) -> None:
        self.world.touch()
        for (_, slot), result in zip(batch, results, strict=True):
            slot.result = result
            slot.done.set()


class Handler:
    """``LeaderService.forward_sends`` on the node asked: submit, wait, answer every item."""

    def __init__(self, node: Node, caller: int, call: ForwardCall) -> None:
        self.node = node
        self.caller = caller
        self.call_id = call.call_id
        node.world.counts["forward calls"] += 1
        self.slots: list[SubmitSlot] = []
        self.deadline = node.world.now + FORWARD_TIMEOUT_MS
        request = pb.ForwardSendsRequest.FromString(call.request)
        self.status = node.router.leader.leader_status(request.group)
        if self.status is None:
            pipeline = node.pipelines[request.group]
            self.slots = [submit_start(pipeline, item) for item in request.items]

    def poll(self) -> bool:
        if self.status is not None:
            reply = pb.ForwardSendsReply(status=self.status)
        elif all(s.done.is_set() for s in self.slots) or self.node.world.now >= self.deadline:
            outcomes = [
                pb.SendOutcome(failure=s.result) if isinstance(s.result, str) else s.result
                for s in self.slots
            ]
            reply = pb.ForwardSendsReply(status=pb.Status(code=pb.Status.OK), outcomes=outcomes)
        else:
            return False
        self.node.handlers.remove(self)
        body = ForwardReturn(self.call_id, reply.SerializeToString())
        self.node.world.send(self.node.id, self.caller, body)
        return True

    def next_due(self) -> int:
        return self.deadline


class ClientOp:
    """``Router.begin_send`` and ``Router.send``/``_retrying`` for one SEND, step by step."""

    def __init__(self, node: Node, attempt: Attempt) -> None:
        self.node = node
        self.world = node.world
        self.attempt = attempt
        self.router = node.router
        self.item = pb.SendItem(
            from_uid=attempt.from_uid,
            channel_id=attempt.channel_id,
            channel_type=attempt.channel_type,
            client_msg_no=attempt.client_msg_no,
            payload=attempt.payload,
            origin_node=node.id,
        )
        self.group = self.router.group_of(attempt.channel_id)
        self.slot: SubmitSlot | None = None
        self.slot_deadline = 0
        self.then: Callable[[Any], None] = self.after_first
        self.wake_at: int | None = None
        self.target = 0
        self.maybe = False
        self.deadline = 0
        self.backoff = BACKOFF_MS
        self.failure = "no_leader"
        self.done = False

    def start(self) -> None:
        target = self.router.leader_of(self.group)
        if target == self.node.id and self.group in self.node.pipelines:
            self.wait(submit_start(self.node.pipelines[self.group], self.item), self.after_first)
        elif target is not None and target != self.node.id:
            self.wait(self.node.forwarder(target, self.group).start(self.item), self.after_first)
        else:
            self.enter_send(False)

    def wait(self, slot: SubmitSlot, then: Callable[[Any], None]) -> None:
        self.slot = slot
        self.slot_deadline = self.world.now + SLOT_WAIT_MS
        self.then = then

    def after_first(self, result: Any) -> None:
        if not isinstance(result, str):
            self.finish(result)
            return
        self.enter_send(may_have_committed(result))

    def enter_send(self, maybe_committed: bool) -> None:
        self.maybe = maybe_committed
        self.deadline = self.world.now + FORWARD_TIMEOUT_MS
        self.backoff = BACKOFF_MS
        self.failure = "no_leader"
        self.iterate()

    def iterate(self) -> None:
        target = self.router.leader_of(self.group)
        if target is None:
            self.give_up_or_sleep()
            return
        self.target = target
        if target == self.node.id:
            pipeline = self.node.pipelines.get(self.group)
            if pipeline is None:
                self.after_attempt("not_leader")
                return
            self.wait(submit_start(pipeline, self.item), self.after_attempt)
        else:
            self.wait(self.node.forwarder(target, self.group).start(self.item), self.after_attempt)

    def after_attempt(self, result: Any) -> None:
        if not isinstance(result, str):
            self.finish(result)
            return
        self.failure = result
        self.maybe = self.maybe or may_have_committed(result)
        if rotate_after(result, self.router._hints.get(self.group), self.target):
            self.router._rotate_guess(self.group, self.target)
        self.give_up_or_sleep()

    def give_up_or_sleep(self) -> None:
        if self.world.now + self.backoff > self.deadline:
            # Looked up at call time, so a test can break the decision and see the model fail.
            failure = _decisions["give_up_failure"](self.failure, self.maybe)
            self.finish(pb.SendOutcome(reason=REASON_OF_FAILURE[failure]))
            return
        self.wake_at = self.world.now + self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF_MS)

    def finish(self, outcome: pb.SendOutcome) -> None:
        self.done = True
        self.node.ops.remove(self)
        self.world.answer(self.attempt, outcome)

    def poll(self) -> bool:
        slot = self.slot
        if slot is not None and slot.done.is_set():
            self.slot = None
            self.then(slot.result)
            return True
        return False

    def next_due(self) -> int | None:
        if self.slot is not None:
            return self.slot_deadline
        return self.wake_at

    def fire(self) -> None:
        now = self.world.now
        slot = self.slot
        if slot is not None and self.slot_deadline <= now:
            self.slot = None
            self.then(slot.result)  # the slot's default: "unknown"
        elif slot is None and self.wake_at is not None and self.wake_at <= now:
            self.wake_at = None
            self.iterate()


_decisions: dict[str, Callable[[str, bool], str]] = {"give_up_failure": give_up_failure}


# --- nodes ---------------------------------------------------------------------------------------


class Node:
    def __init__(self, world: World, node_id: int) -> None:
        self.world = world
        self.id = node_id
        self.up = False
        self.life = 0
        self.groups = PLACEMENT.groups_of_node(node_id)
        self._reset()

    def _reset(self) -> None:
        self.replicas: dict[int, Replica] = {}
        self.pipelines: dict[int, Pipeline] = {}
        self.forwarders: dict[tuple[int, int], Forwarder] = {}
        self.calls: dict[int, Forwarder] = {}
        self.handlers: list[Handler] = []
        self.ops: list[ClientOp] = []

    def start(self) -> None:
        self.up = True
        self.life += 1
        self.router = Router(
            RouterSettings(node_id=self.id, grpc_port=0),
            PLACEMENT,
            None,
            lambda *a: None,
            lambda *a: 0,
            lambda *a: [],
        )
        for g in self.groups:
            replica = self.replicas[g] = Replica(self, g, self.world.disks[(self.id, g)])
            self.router.local[g] = LocalView(replica)
            self.pipelines[g] = Pipeline(self, g)
        for replica in self.replicas.values():
            replica.apply_committed()  # journal replay
        self.world.touch()

    def crash(self) -> None:
        """Memory is lost (queues, proposals, calls, clients' connections); disks stay."""
        for op in self.ops:
            op.attempt.lost = True
        self.up = False
        self._reset()

    def forwarder(self, target: int, group: int) -> Forwarder:
        key = (target, group)
        if key not in self.forwarders:
            self.forwarders[key] = Forwarder(self, target, group)
        return self.forwarders[key]

    def submit(self, attempt: Attempt) -> None:
        op = ClientOp(self, attempt)
        self.ops.append(op)
        op.start()

    def receive(self, src: int, body: Any) -> None:
        if isinstance(body, ForwardCall):
            self.handlers.append(Handler(self, src, body))
            self.world.touch()
        elif isinstance(body, ForwardReturn):
            forwarder = self.calls.pop(body.call_id, None)
            if forwarder is not None:
                forwarder.on_reply(body.call_id, body.reply)
        else:
            replica = self.replicas.get(body.group)
            if replica is not None:
                replica.receive(src, body)

    def poll(self, held: set[tuple[int, int]]) -> bool:
        progressed = False
        for op in list(self.ops):
            progressed |= op.poll()
        for handler in list(self.handlers):
            progressed |= handler.poll()
        for pipeline in self.pipelines.values():
            if pipeline.queue:
                progressed |= pipeline.flush()
        for forwarder in list(self.forwarders.values()):
            if forwarder.queue:
                progressed |= forwarder.flush()
        for g, replica in self.replicas.items():
            if replica.queue and (self.id, g) not in held:
                progressed |= replica.drain()
        return progressed

    def timers(self) -> Iterator[tuple[int, Callable[[], None]]]:
        for replica in self.replicas.values():
            yield replica.next_due(), replica.fire
        for pipeline in self.pipelines.values():
            due = pipeline.next_due()
            if due is not None:
                yield due, pipeline.fire
        for forwarder in self.forwarders.values():
            due = forwarder.next_due()
            if due is not None:
                yield due, forwarder.fire
        for handler in self.handlers:
            yield handler.next_due(), handler.poll
        for op in self.ops:
            due = op.next_due()
            if due is not None:
                yield due, op.fire


# --- the world -----------------------------------------------------------------------------------


class World:
    def __init__(self, pool: StorePool, machine_factory: MachineFactory = GroupMachine) -> None:
        self.machine_factory = machine_factory
        self.now = 0
        self.net: list[Envelope] = []
        self.side = {n: 0 for n in NODE_IDS}
        self.held: set[tuple[int, int]] = set()
        self.dirty = True
        self.calls = 0
        self.check_cache: dict[tuple[int, int], Any] = {}
        """For ``checks``: what it read of a store, by (node, group)."""
        self.counts: collections.Counter[str] = collections.Counter()
        """How often the model took its rarer paths (to see what a search reached)."""
        self.attempts: list[Attempt] = []
        self.leaders: dict[tuple[int, int], int] = {}
        self.committed: dict[int, list[Entry]] = {g: [] for g in PLACEMENT.groups}
        self.disks = {
            (n, g): Disk(pool.fresh(f"n{n}-g{g}"))
            for g, members in PLACEMENT.groups.items()
            for n in members
        }
        self.nodes = {n: Node(self, n) for n in NODE_IDS}
        self._bootstrap()

    def _bootstrap(self) -> None:
        """Every group starts in term 1, led by its first replica, with its group channels
        created (subscribers u1 and u2) in a committed and applied entry."""
        for g, members in PLACEMENT.groups.items():
            log: list[Entry] = []
            for ctype, cid in CHANNELS_OF_GROUP[g]:
                if ctype == GROUP:
                    op = pb.MetaOp(
                        channel=pb.ChannelUpdate(
                            channel_id=cid, channel_type=GROUP, add_subscribers=SUBSCRIBERS
                        )
                    )
                    command = pb.Command(time_ms=self.time_ms(), meta=op)
                    log.append((1, command.SerializeToString()))
            log.append((1, None))  # the first leader's no-op
            for n in members:
                self.disks[(n, g)] = Disk(
                    self.disks[(n, g)].store, 1, members[0], list(log), len(log)
                )
            self.committed[g] = list(log)
        for node in self.nodes.values():
            node.start()
        for g, members in PLACEMENT.groups.items():
            self.nodes[members[0]].replicas[g].become_leader(noop=False)
            for n in members[1:]:
                self.nodes[n].replicas[g].set_leader(members[0])
        self.net.clear()  # the leaders' first AppendEntries carry nothing new

    # --- plumbing

    def time_ms(self, node_id: int | None = None) -> int:
        """A node's wall clock, which the leader stamps on its commands."""
        return CLOCK_BASE_MS + self.now + (CLOCK_SKEW_MS[node_id] if node_id else 0)

    def new_call_id(self) -> int:
        self.calls += 1
        return self.calls

    def connected(self, a: int, b: int) -> bool:
        return self.side[a] == self.side[b]

    def send(self, src: int, dst: int, body: Any) -> None:
        target = self.nodes[dst]
        if target.up and self.connected(src, dst):
            self.net.append(Envelope(src, dst, target.life, body))

    def in_flight(self, src: int, dst: int, kind: type, group: int) -> bool:
        return any(
            e.src == src and e.dst == dst and isinstance(e.body, kind) and e.body.group == group
            for e in self.net
        )

    def deliver(self, index: int) -> None:
        env = self.net.pop(index)
        node = self.nodes[env.dst]
        if node.up and node.life == env.dst_life and self.connected(env.src, env.dst):
            node.receive(env.src, env.body)
        self.pump()

    def drop(self, index: int) -> None:
        self.net.pop(index)

    def deliver_all(self, limit: int = 5000) -> None:
        for _ in range(limit):
            if not self.net:
                return
            self.deliver(0)
        raise AssertionError("the network does not quiesce")

    def touch(self) -> None:
        """Something ``pump`` looks at changed (a queue, a slot, a leader)."""
        self.dirty = True

    def release(self) -> None:
        """Stalled Raft drivers run again."""
        self.held.clear()
        self.touch()
        self.pump()

    def pump(self) -> None:
        """Run everything that happens in this instant: completed slots continue their sends,
        pipelines and forwarders flush, Raft drains its command queues."""
        for _ in range(200):
            if not self.dirty:
                return
            self.dirty = False
            for node in self.nodes.values():
                if node.up and node.poll(self.held):
                    self.dirty = True
        raise AssertionError("the model does not settle within an instant")

    def advance(self, ms: int, *, deliver: bool) -> None:
        """Let ``ms`` pass: timers fire in order; with ``deliver`` the network is healthy (every
        message arrives at once), else it holds every message."""
        end = self.now + ms
        for _ in range(100_000):
            if deliver:
                self.deliver_all()
            due = min(
                (d for node in self.nodes.values() if node.up for d, _ in node.timers()),
                default=None,
            )
            if due is None or due > end:
                break
            self.now = max(self.now, due)
            for node in self.nodes.values():
                if node.up:
                    for when, fire in list(node.timers()):
                        if when <= self.now:
                            fire()
            self.touch()
            self.pump()
        else:
            raise AssertionError("timers do not advance")
        self.now = end
        if deliver:
            self.deliver_all()

    # --- nemeses

    def hold(self, group: int) -> None:
        """Stall the group's Raft drivers: commands stay queued until ``held`` is cleared."""
        self.held.update((n, group) for n in PLACEMENT.replicas(group))

    def partition(self, island: set[int]) -> None:
        self.side = {n: int(n in island) for n in NODE_IDS}
        self.net = [e for e in self.net if self.connected(e.src, e.dst)]

    def heal(self) -> None:
        self.side = {n: 0 for n in NODE_IDS}

    def crash(self, node_id: int) -> None:
        self.nodes[node_id].crash()
        self.net = [e for e in self.net if e.dst != node_id]
        self.held = {h for h in self.held if h[0] != node_id}
        # Calls to it fail at once (the connection resets), as gRPC reports UNAVAILABLE.
        for node in self.nodes.values():
            for forwarder in node.forwarders.values():
                if forwarder.target == node_id and forwarder.call is not None:
                    node.calls.pop(forwarder.call[0], None)
                    batch, forwarder.call = forwarder.call[1], None
                    forwarder.settle(batch, ["forward_failed"] * len(batch))
        self.pump()

    def restart(self, node_id: int) -> None:
        self.nodes[node_id].start()
        self.pump()

    # --- clients

    def submit(
        self, node_id: int, channel: tuple[int, str], from_uid: str, client_msg_no: str
    ) -> Attempt | None:
        node = self.nodes[node_id]
        if not node.up:
            return None  # the client cannot connect
        attempt = Attempt(
            len(self.attempts) + 1,
            node_id,
            channel[0],
            channel[1],
            from_uid,
            client_msg_no,
            self.now,
        )
        self.attempts.append(attempt)
        node.submit(attempt)
        return attempt

    def answer(self, attempt: Attempt, outcome: pb.SendOutcome) -> None:
        attempt.reason = outcome.reason
        if outcome.reason == ReasonCode.SUCCESS:
            attempt.message_id = outcome.message_id
            attempt.message_seq = outcome.message_seq
            attempt.duplicate = outcome.duplicate
            attempt.ack_floor = max(
                self.disks[(n, attempt.group)].store.applied_index()
                for n in PLACEMENT.replicas(attempt.group)
            )

    # --- oracle bookkeeping (Raft safety of the simulation itself)

    def note_leader(self, group: int, term: int, node_id: int) -> None:
        other = self.leaders.setdefault((group, term), node_id)
        assert other == node_id, f"group {group} term {term}: leaders {other} and {node_id}"

    def note_committed(self, group: int, prefix: list[Entry]) -> None:
        known = self.committed[group]
        common = min(len(known), len(prefix))
        assert known[:common] == prefix[:common], f"group {group}: committed entries changed"
        if len(prefix) > len(known):
            self.committed[group] = list(prefix)

    # --- settling

    def converged(self) -> bool:
        for node in self.nodes.values():
            if not node.up or node.ops or node.handlers or node.calls:
                return False
            if any(p.queue or p.in_flight for p in node.pipelines.values()):
                return False
            if any(f.queue or f.call for f in node.forwarders.values()):
                return False
        for g, members in PLACEMENT.groups.items():
            replicas = [self.nodes[n].replicas[g] for n in members]
            leaders = [r for r in replicas if r.role == LEADER]
            if len(leaders) != 1:
                return False
            log = leaders[0].log
            for r in replicas:
                if r.queue or r.log != log or r.commit != len(log) or r.last_applied != len(log):
                    return False
                if r.leader != leaders[0].node.id:
                    return False
        return True

    def settle(self, max_ms: int = 60_000) -> None:
        """Heal, restart everyone, and run a healthy network until every send is answered and
        every replica applied the same log."""
        self.held.clear()
        self.touch()
        self.heal()
        for node_id, node in self.nodes.items():
            if not node.up:
                self.restart(node_id)
        waited = 0
        while not self.converged():
            assert waited < max_ms, f"no convergence after {max_ms} ms:\n{self.describe()}"
            self.advance(250, deliver=True)
            waited += 250

    def describe(self) -> str:
        lines = [f"t={self.now} ms, {len(self.net)} messages in flight"]
        for node in self.nodes.values():
            state = "up" if node.up else "down"
            lines.append(f"node {node.id} ({state}, {len(node.ops)} sends open)")
            for g, r in node.replicas.items():
                lines.append(
                    f"  group {g}: {r.role} term {r.term} leader {r.leader} log {len(r.log)} "
                    f"commit {r.commit} applied {r.last_applied} queue {len(r.queue)}"
                )
        for a in self.attempts:
            lines.append(
                f"attempt {a.id} at node {a.node}: {a.channel_id} {a.from_uid} "
                f"{a.client_msg_no} -> {a.outcome()}"
            )
        return "\n".join(lines)
