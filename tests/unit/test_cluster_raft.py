"""Raft groups across several drivers in one process, on loopback: election, replication
order, snapshot catch-up of a new replica, and the transport's refusal of forged frames.

Each replica has its own ``RaftDriver`` (as each node has one), a RocksDB store and a
``GroupMachine``; replicas are compared through their stores. Elections signal nothing, so the
leader is found by polling with a deadline; applied state is awaited through a condition
variable the state machine notifies.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import pickle
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import FAIL_REASON
from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.syncobj import _RAFT_STATE

from cluster.raft import pysyncobj_seam as seam
from cluster.raft.conf import RaftTiming, make_conf
from cluster.raft.driver import RaftDriver
from cluster.raft.group import FIRST_ROUND, ReplicatedGroup
from cluster.raft.snapshot import CheckpointSnapshots
from cluster.raft.wire import authenticator_for
from node.groups.machine import GroupMachine
from node.storage import Store
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode

PERSON = int(ChannelType.PERSON)
T0 = 1_800_000_000_000
WAIT_S = 20.0
FAST = RaftTiming(
    tick_interval_s=0.02,
    heartbeat_s=0.05,
    election_min_s=0.25,
    election_max_s=0.5,
    connection_retry_s=0.1,
)
# One port per test (the hosts are fixed); derived from the pid so that two runs on one
# machine do not collide, and below the ephemeral range.
_ports = itertools.count(20_000 + (os.getpid() % 1000) * 10)


# --- replicas ---------------------------------------------------------------------------------


class Recorder(GroupMachine):
    """The real state machine, plus the order in which this replica applied commands."""

    def __init__(self, group: int, store: Store) -> None:
        super().__init__(group, store)
        self.log: list[tuple[int, bytes]] = []
        self.cond = threading.Condition()
        # What a waiter may rely on: the store's applied index is written inside apply, before
        # ``log`` is appended to, so waiting on the store could return with ``log`` one short.
        # ``seen`` moves under the condition, after ``log``.
        self.seen = store.applied_index()
        self.installs = 0

    def apply(self, index: int, command: bytes) -> bytes:
        fresh = index > self.store.applied_index()
        result = super().apply(index, command)
        with self.cond:
            if fresh:
                self.log.append((index, command))
            self.seen = max(self.seen, index)
            self.cond.notify_all()
        return result

    def install(self, path: str) -> None:
        super().install(path)
        with self.cond:
            self.installs += 1
            self.seen = max(self.seen, self.store.applied_index())
            self.cond.notify_all()

    def wait_applied(self, index: int, timeout_s: float = WAIT_S) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.seen >= index, timeout_s)
        assert ok, f"applied {self.seen} < {index} after {timeout_s} s"


class Replica:
    def __init__(
        self,
        directory: Path,
        address: str,
        partners: list[str],
        *,
        password: str | None = None,
        timing: RaftTiming = FAST,
    ) -> None:
        self.address = address
        self.store = Store(directory / "db")
        self.machine = Recorder(1, self.store)
        self.snapshots = CheckpointSnapshots(self.machine, directory / "snapshots")
        conf = make_conf(
            password=password,
            bind_address=address,
            journal_file=str(directory / "raft.journal"),
            dump_file=str(directory / "raft.dump"),
            snapshots=self.snapshots,
            timing=timing,
        )
        self.driver = RaftDriver(timing.tick_interval_s, name=address)
        self.driver.start()
        machine, snapshots = self.machine, self.snapshots
        self.raft: ReplicatedGroup = self.driver.add_group(
            "g1", lambda: ReplicatedGroup(address, partners, conf, machine, snapshots)
        ).result(10)

    def is_leader(self) -> bool:
        return seam.is_leader(self.raft)

    def leader(self) -> str | None:
        node = seam.leader(self.raft)
        return None if node is None else str(getattr(node, "address", node))

    def close(self) -> None:
        self.driver.stop()
        self.store.close()


class Cluster:
    def __init__(self, tmp_path: Path, size: int = 3, **kw: Any) -> None:
        self.tmp_path = tmp_path
        self.port = next(_ports)
        self.kw = kw
        self.addresses = [self.address(i) for i in range(1, size + 1)]
        self.replicas: list[Replica] = []
        for addr in self.addresses:
            partners = [a for a in self.addresses if a != addr]
            self.add_replica(addr, partners)

    def address(self, n: int) -> str:
        return f"127.0.89.{n}:{self.port}"

    def add_replica(self, address: str, partners: list[str]) -> Replica:
        directory = self.tmp_path / address.replace(":", "_")
        replica = Replica(directory, address, partners, **self.kw)
        self.replicas.append(replica)
        return replica

    def leader(self) -> Replica:
        """The one leader every replica agrees on (polled: elections signal nothing)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            leaders = [r for r in self.replicas if r.is_leader()]
            if len(leaders) == 1 and all(r.leader() == leaders[0].address for r in self.replicas):
                return leaders[0]
            assert time.monotonic() < deadline, "no agreed leader"
            time.sleep(0.02)

    def close(self) -> None:
        errors = []
        for r in self.replicas:
            try:
                r.close()
            except Exception as e:  # close the rest anyway
                errors.append(e)
        assert not errors, errors


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def propose(replica: Replica, command: pb.Command) -> concurrent.futures.Future[bytes]:
    fut: concurrent.futures.Future[bytes] = concurrent.futures.Future()

    def callback(result: Any, error: int) -> None:  # driver thread
        if error == FAIL_REASON.SUCCESS:
            fut.set_result(bytes(result or b""))
        else:
            fut.set_exception(RuntimeError(f"pysyncobj reason {error}"))

    replica.raft.apply(command.SerializeToString(), callback=callback)
    return fut


def send(i: int, prefix: str = "n") -> pb.Command:
    it = pb.SendItem(
        from_uid="a",
        channel_id="a@b",
        channel_type=PERSON,
        client_msg_no=f"{prefix}{i}",
        payload=f"{prefix}{i}".encode(),
    )
    return pb.Command(time_ms=T0 + i, send=pb.SendBatch(items=[it]))


def commit_all(leader: Replica, commands: list[pb.Command]) -> list[pb.SendOutcome]:
    futures = [propose(leader, c) for c in commands]
    outs = []
    for fut in futures:
        result = pb.SendBatchResult.FromString(fut.result(WAIT_S))
        outs.extend(result.outcomes)
    assert all(o.reason == ReasonCode.SUCCESS for o in outs)
    return outs


def first_log_index(replica: Replica) -> int:
    """The first entry still in the replica's Raft log (read on its driver thread)."""
    return int(replica.driver.call(lambda: replica.raft._SyncObj__raftLog[0][1]).result(10))


def raw_dump(store: Store) -> dict[str, list[tuple[bytes, bytes]]]:
    return {name: [(bytes(k), bytes(v)) for k, v in cf.items()] for name, cf in store._cf.items()}


def assert_same_state(replicas: list[Replica]) -> None:
    index = max(r.store.applied_index() for r in replicas)
    for r in replicas:
        r.machine.wait_applied(index)
    first = raw_dump(replicas[0].store)
    for r in replicas[1:]:
        assert raw_dump(r.store) == first, f"{r.address} differs from {replicas[0].address}"


# --- election and replication -----------------------------------------------------------------


def test_a_leader_is_elected_and_commands_apply_in_the_same_order_everywhere(
    cluster: Cluster,
) -> None:
    leader = cluster.leader()
    outs = commit_all(leader, [send(i) for i in range(40)])
    # proposals from one thread keep their order in the log
    assert [o.message_seq for o in outs] == list(range(1, 41))
    assert_same_state(cluster.replicas)
    logs = [r.machine.log for r in cluster.replicas]
    assert len(logs[0]) == 40
    assert all(log == logs[0] for log in logs)
    indexes = [index for index, _ in logs[0]]
    assert indexes == sorted(indexes) and len(set(indexes)) == 40
    for r in cluster.replicas:
        msgs = r.store.messages(PERSON, "a@b", 0, 0, 100)
        assert [m.message_seq for m in msgs] == list(range(1, 41))
        assert [m.message_id for m in msgs] == [o.message_id for o in outs]


def test_a_follower_applies_what_the_leader_commits(cluster: Cluster) -> None:
    """Only the leader proposes in raftchat; what it commits reaches every follower."""
    leader = cluster.leader()
    follower = next(r for r in cluster.replicas if r is not leader)
    commit_all(leader, [send(0)])
    follower.machine.wait_applied(leader.store.applied_index())
    assert follower.store.head_seq(PERSON, "a@b") == 1
    assert not follower.is_leader()


def link_idle_s(replica: Replica, other: Replica) -> float:
    """Seconds since ``replica`` last read from its Raft link to ``other`` (on pysyncobj's
    clock, CLOCK_MONOTONIC_RAW, which is not ``time.monotonic``'s)."""

    def read() -> float:
        transport = replica.raft._SyncObj__transport
        conn = next(c for n, c in transport._connections.items() if n.address == other.address)
        return float(raft_clock() - conn._TcpConnection__lastReadTime)

    return replica.driver.call(read).result(10)


@pytest.mark.parametrize("password", [None, "s3cret"], ids=["open", "password"])
@pytest.mark.parametrize("dials", [True, False], ids=["candidate-dials", "voter-dials"])
def test_a_candidate_wins_its_first_round_over_an_idle_link(
    tmp_path: Path, password: str | None, dials: bool
) -> None:
    """Followers never talk to each other, and pysyncobj drops a link that has not been read
    from for ``connectionTimeout`` at the next send, discarding what was sent: the vote
    request of the first candidate after a leader died. The candidate asks again when the
    link is back, so it wins in the term it stood in, not a whole election timeout later
    (ADR 010). The link is reported up at different moments whether the candidate or the voter
    opens it (the higher address does) and with or without a password: every way must work."""
    cluster = Cluster(tmp_path, password=password)
    try:
        candidate_wins_first_round(cluster, dials)
    finally:
        cluster.close()


def candidate_wins_first_round(cluster: Cluster, dials: bool) -> None:
    leader = cluster.leader()
    lower, higher = sorted(
        (r for r in cluster.replicas if r is not leader), key=lambda r: r.address
    )
    candidate, voter = (higher, lower) if dials else (lower, higher)
    # What the voter's replica reports to whoever waits on leadership (node/groups/local.py).
    news: list[str | None] = []
    heard = threading.Condition()

    def on_news() -> None:  # on the voter's driver thread, at the end of a tick
        with heard:
            news.append(voter.leader())
            heard.notify_all()

    def no_own_elections(replica: Replica) -> None:
        # Only stand_now() below starts an election, however long the steps take.
        conf = replica.raft._SyncObj__conf
        conf.raftMinTimeout = conf.raftMaxTimeout = 600.0
        replica.raft._SyncObj__raftElectionDeadline = raft_clock() + 600.0

    candidate.driver.call(lambda: no_own_elections(candidate)).result(10)
    voter.driver.call(lambda: no_own_elections(voter)).result(10)
    voter.driver.call(lambda: setattr(voter.raft, "on_leader_news", on_news)).result(10)
    timeout = candidate.raft._SyncObj__conf.connectionTimeout
    deadline = time.monotonic() + WAIT_S
    # The link between the followers goes stale with time alone (nothing to wait on).
    while link_idle_s(candidate, voter) <= timeout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cluster.replicas.remove(leader)
    leader.close()

    def stand_now() -> int:
        candidate.raft._SyncObj__raftElectionDeadline = 0
        return int(candidate.raft._SyncObj__raftCurrentTerm)

    term = candidate.driver.call(stand_now).result(10)
    assert cluster.leader() is candidate, "the first vote request was lost"
    won = candidate.driver.call(lambda: int(candidate.raft._SyncObj__raftCurrentTerm)).result(10)
    assert won == term + 1
    # The voter reports leader news at the end of the tick after the message that changed its
    # leader, which may come after cluster.leader() above already sees the change: wait for the
    # news itself. It reported the lost leader (None, when the candidate's term reached it),
    # then the new one.
    with heard:
        assert heard.wait_for(lambda: bool(news) and news[-1] == candidate.address, WAIT_S)
        assert None in news
    commit_all(candidate, [send(0)])


def test_a_candidates_first_round_is_short_and_later_rounds_whole(cluster: Cluster) -> None:
    """A split vote (both followers of a dead leader stand at once) costs the first round:
    it lasts a fraction of the minimum timeout, not a whole timeout. A candidate whose first
    round failed waits whole timeouts again (ADR 010)."""
    leader = cluster.leader()
    followers = [r for r in cluster.replicas if r is not leader]
    # The higher address opens the followers' link, so the candidate can restore it if its
    # first request finds it stale (the voter below cannot).
    voter, candidate = sorted(followers, key=lambda r: r.address)
    rounds: list[tuple[int, float]] = []  # (term, seconds left), as each round began
    raft = candidate.raft
    tick = raft._onTick

    def recording_tick(time_to_wait: float = 0.0) -> None:  # on the candidate's driver thread
        term = raft._SyncObj__raftCurrentTerm
        tick(time_to_wait)
        if (
            raft._SyncObj__raftCurrentTerm != term
            and raft._SyncObj__raftState == _RAFT_STATE.CANDIDATE
        ):
            rounds.append((term + 1, raft._SyncObj__raftElectionDeadline - raft_clock()))

    candidate.driver.call(lambda: setattr(raft, "_onTick", recording_tick)).result(10)
    # The voter's driver thread is held before the leader goes: its sockets stay open, so
    # the candidate may stand (pysyncobj needs a connected partner), but no vote comes back.
    release = threading.Event()
    held = voter.driver.call(lambda: release.wait(WAIT_S))
    try:
        cluster.replicas.remove(leader)
        leader.close()
        deadline = time.monotonic() + WAIT_S
        while len(candidate.driver.call(lambda: list(rounds)).result(10)) < 2:
            assert time.monotonic() < deadline, "the candidate did not stand twice"
            time.sleep(0.02)  # elections signal nothing
    finally:
        release.set()
        held.result(10)
    (term1, first), (term2, second) = candidate.driver.call(lambda: rounds[:2]).result(10)
    low, high = (FAST.election_min_s * f for f in FIRST_ROUND)
    assert low - 0.01 <= first <= high, f"first round {first:.3f} s"
    assert term2 == term1 + 1
    assert second >= FAST.election_min_s - 0.01, f"second round {second:.3f} s"
    commit_all(cluster.leader(), [send(0)])


def test_a_second_vote_answer_from_one_member_does_not_count(tmp_path: Path) -> None:
    """A candidate may ask a member twice in one term (above); should that member answer twice,
    its vote still counts once. In a group of five, two answers from one member plus the
    candidate's own vote would otherwise be a majority."""
    base = next(_ports)
    addresses = [f"127.0.89.{n}:{base}" for n in range(1, 6)]
    # The partners never start: the replica is forced into candidacy by hand.
    replica = Replica(tmp_path, addresses[0], addresses[1:])
    try:
        raft = replica.raft

        def stand() -> list[Any]:
            raft._SyncObj__raftState = _RAFT_STATE.CANDIDATE
            raft._SyncObj__raftCurrentTerm = 7
            raft._SyncObj__votesCount = 1
            return sorted(raft._SyncObj__otherNodes, key=lambda n: n.id)

        voters = replica.driver.call(stand).result(10)

        def answer(node: Any) -> bool:
            raft._SyncObj__onMessageReceived(node, {"type": "response_vote", "term": 7})
            return bool(raft._isLeader())

        assert not replica.driver.call(lambda: answer(voters[0])).result(10)
        assert not replica.driver.call(lambda: answer(voters[0])).result(10)
        assert replica.driver.call(lambda: answer(voters[1])).result(10)
    finally:
        replica.close()


def test_commands_larger_than_pysyncobj_chunks_commit_everywhere(cluster: Cluster) -> None:
    """pysyncobj sends an entry above ``appendEntriesBatchSizeBytes`` in chunks and marks the
    wrong chunk as the last one for some sizes (just under a multiple of the chunk size): the
    follower then unpickles a truncated entry. Our conf keeps every command under that limit."""
    leader = cluster.leader()
    # Payloads that put the pickled entry just over 2 and 3 chunks while its data stays
    # under them (pysyncobj's framing adds ~86 bytes to the data and ~75 more to the entry).
    sizes = [70_000, 2 * 65_536 - 150, 2 * 65_536 - 120, 3 * 65_536 - 130, 400_000]
    commands = []
    for i, size in enumerate(sizes):
        item = pb.SendItem(from_uid="a", channel_id="a@b", channel_type=PERSON, payload=b"x" * size)
        commands.append(pb.Command(time_ms=T0 + i, send=pb.SendBatch(items=[item])))
    outs = commit_all(leader, commands)
    assert [o.message_seq for o in outs] == list(range(1, len(sizes) + 1))
    assert_same_state(cluster.replicas)
    assert all(r.driver.thread.is_alive() for r in cluster.replicas)


# --- snapshot catch-up ------------------------------------------------------------------------


def test_a_new_replica_catches_up_through_a_checkpoint_snapshot(tmp_path: Path) -> None:
    timing = RaftTiming(
        tick_interval_s=FAST.tick_interval_s,
        heartbeat_s=FAST.heartbeat_s,
        election_min_s=FAST.election_min_s,
        election_max_s=FAST.election_max_s,
        connection_retry_s=FAST.connection_retry_s,
        compaction_entries=20,
    )
    cluster = Cluster(tmp_path, timing=timing)
    try:
        leader = cluster.leader()
        first = commit_all(leader, [send(i) for i in range(100)])
        assert [o.message_seq for o in first] == list(range(1, 101))
        assert_same_state(cluster.replicas)
        # the log was compacted into checkpoints: entry 2 is gone from every journal
        deadline = time.monotonic() + WAIT_S
        while first_log_index(leader) <= 2:
            assert time.monotonic() < deadline, "the leader never compacted its log"
            time.sleep(0.02)  # compaction finishes on a later tick; it signals nothing
        assert leader.snapshots.taken >= 1

        new_addr = cluster.address(4)
        newcomer = cluster.add_replica(new_addr, list(cluster.addresses))
        added: concurrent.futures.Future[int] = concurrent.futures.Future()
        leader.driver.call(
            lambda: leader.raft.addNodeToCluster(
                new_addr, callback=lambda _res, err: added.set_result(err)
            )
        ).result(10)
        assert added.result(WAIT_S) == FAIL_REASON.SUCCESS

        newcomer.machine.wait_applied(leader.store.applied_index())
        with newcomer.machine.cond:
            # Counted by Recorder.install itself: the snapshot counter moves only after the
            # install has woken the wait above.
            assert newcomer.machine.installs >= 1
        # it did not replay the commands one by one: it got them in a checkpoint
        assert len(newcomer.machine.log) < 100
        # and it follows the commands after the snapshot
        later = commit_all(leader, [send(i, "late") for i in range(10)])
        assert [o.message_seq for o in later] == list(range(101, 111))
        assert_same_state(cluster.replicas)
        msgs = newcomer.store.messages(PERSON, "a@b", 0, 0, 1000)
        assert [m.message_seq for m in msgs] == list(range(1, 111))
        applied = [
            r.driver.call(lambda r=r: r.raft._SyncObj__raftLastApplied).result(10)
            for r in (newcomer, leader)
        ]
        assert applied[0] == applied[1]
    finally:
        cluster.close()


# --- transport security -----------------------------------------------------------------------


class Tap:
    """A TCP relay from ``listen`` to ``target`` that keeps every byte it relays, both ways: what
    someone on the network between two replicas would read."""

    def __init__(self, listen: str, target: str) -> None:
        host, port = listen.rsplit(":", 1)
        self.target = target
        self.server = socket.create_server((host, int(port)))
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inside, _ = self.server.accept()
            except OSError:
                return  # closed
            host, port = self.target.rsplit(":", 1)
            try:
                outside = socket.create_connection((host, int(port)), timeout=10)
            except OSError:  # the target is not listening yet: the dialer will try again
                inside.close()
                continue
            self.socks += [inside, outside]
            for a, b in ((inside, outside), (outside, inside)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self.lock:
                    self.seen += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self.server.close()
        for sock in self.socks:
            sock.close()


@pytest.mark.parametrize("password", [None, "cluster-secret"], ids=["open", "password"])
def test_raft_traffic_between_replicas_is_not_readable_on_the_wire(
    tmp_path: Path, password: str | None
) -> None:
    """Two replicas, one link between them through a tap. With the cluster password (always,
    in a node) the bytes on the wire never show a command; without one, pysyncobj sends plain
    pickles, which shows that the tap does see the commands."""
    port = next(_ports)
    a, b, relay = (f"127.0.89.{n}:{port}" for n in (9, 2, 5))
    # pysyncobj lets the higher address dial: a dials the tap, which relays to b.
    tap = Tap(relay, b)
    replicas = [
        Replica(tmp_path / "b", b, [a], password=password),
        Replica(tmp_path / "a", a, [relay], password=password),
    ]
    try:
        deadline = time.monotonic() + WAIT_S
        while not any(r.is_leader() for r in replicas):
            assert time.monotonic() < deadline, "no leader"
            time.sleep(0.02)
        leader = next(r for r in replicas if r.is_leader())
        marker = "SECRET-PAYLOAD-0123456789"
        commit_all(leader, [send(i, prefix=marker) for i in range(5)])
        for r in replicas:
            r.machine.wait_applied(leader.store.applied_index())
            assert any(marker.encode() in command for _, command in r.machine.log)
        with tap.lock:
            seen = bytes(tap.seen)
        assert len(seen) > 5 * len(marker)
        assert (marker.encode() in seen) is (password is None)
    finally:
        for r in replicas:
            r.close()
        tap.close()


class Evil:
    """Unpickling this touches ``marker``: what a forged frame would run on the node."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def frame(obj: Any, sign_with: str | None = None, fernet: bool = False) -> bytes:
    """One pysyncobj TCP frame: a 4-byte native-order length, then the pickle, signed as
    raftchat signs frames (``cluster/raft/wire.py``) or as stock pysyncobj would (zlib, Fernet)
    with ``sign_with`` as the password."""
    data = pickle.dumps(obj, protocol=2)
    if fernet:
        from pysyncobj.encryptor import getEncryptor

        data = getEncryptor(sign_with or "").encrypt(zlib.compress(data, 3))
    elif sign_with is not None:
        data = authenticator_for(sign_with).encrypt_at_time(data, int(time.monotonic()))
    return struct.pack("i", len(data)) + data


def attack(address: str, marker: Path, sign_with: str | None = None, fernet: bool = False) -> None:
    """Send a forged frame and return when the node hangs up, which proves its driver read
    the frame. The forged object sits in a tuple: unpickled, the tuple is a message that
    names no known node, so pysyncobj drops the connection (a bare ``None`` it would ignore)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(frame((Evil(marker), "not-a-node"), sign_with, fernet))
        while sock.recv(65536):
            pass


def test_forged_pickles_never_run_when_the_cluster_has_a_password(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cluster = Cluster(tmp_path, password="cluster-secret")
    try:
        leader = cluster.leader()
        commit_all(leader, [send(0)])
        follower = next(r for r in cluster.replicas if r is not leader)
        # a raw pickle, as pysyncobj unpickles it without a password
        attack(follower.address, marker)
        attack(leader.address, marker)
        # one signed with the wrong password, and one in pysyncobj's own Fernet format
        attack(leader.address, marker, sign_with="wrong")
        attack(follower.address, marker, sign_with="cluster-secret", fernet=True)
        assert not marker.exists()
        # the drivers keep working: a command proposed afterwards commits on every replica
        outs = commit_all(leader, [send(1)])
        assert outs[0].message_seq == 2
        assert_same_state(cluster.replicas)
        assert all(r.driver.thread.is_alive() for r in cluster.replicas)
    finally:
        cluster.close()
    assert not marker.exists()


def test_a_group_whose_port_is_taken_fails_at_once_naming_its_address(tmp_path: Path) -> None:
    """pysyncobj retries a failed bind forever by default, inside the constructor, so the
    driver thread spun and the node hung (ignoring SIGTERM) on a taken Raft port."""
    address = f"127.0.89.9:{next(_ports)}"
    host, port = address.rsplit(":", 1)
    with socket.socket() as holder:
        holder.bind((host, int(port)))
        holder.listen()
        driver = RaftDriver(FAST.tick_interval_s, name="taken")
        driver.start()
        store = Store(tmp_path / "db")
        try:
            machine = GroupMachine(1, store)
            snapshots = CheckpointSnapshots(machine, tmp_path / "snapshots")
            conf = make_conf(
                password="secret",
                bind_address=address,
                journal_file=str(tmp_path / "raft.journal"),
                dump_file=str(tmp_path / "raft.dump"),
                snapshots=snapshots,
                timing=FAST,
            )
            built = driver.add_group(
                "g1", lambda: ReplicatedGroup(address, [], conf, machine, snapshots)
            )
            with pytest.raises(OSError) as caught:
                built.result(5)
            assert str(caught.value) == f"cannot listen on {address} (Raft): Address already in use"
            # The driver goes on serving calls: the failed group left nothing behind in it.
            assert driver.call(driver.group_names).result(5) == []
        finally:
            driver.stop()
            store.close()
