"""Group commit in front of a real one-node Raft group: the pipeline behaviours that the old
single-node send pipeline guaranteed, now through pysyncobj, the state machine and RocksDB.

Each test runs ``trio.run`` itself. Completion is awaited through the pipeline's callbacks
(events); only leadership is polled, because an election signals nothing.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import trio

from cluster.invariant import InvariantViolation
from cluster.raft.conf import RaftTiming, make_conf
from cluster.raft.driver import RaftDriver
from cluster.raft.group import ReplicatedGroup
from cluster.raft.snapshot import CheckpointSnapshots
from node.groups.local import LocalGroup, ProposalError
from node.groups.machine import GroupMachine
from node.groups.pipeline import GroupPipeline
from node.groups.reads import run_query
from node.storage import Store
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, HeaderFlag, ReasonCode

PERSON, GROUP = int(ChannelType.PERSON), int(ChannelType.GROUP)
T = TypeVar("T")

# A fresh loopback address per node; the port depends on the process so that two test runs on
# one machine do not collide. Everything stays below the ephemeral range.
_hosts = (f"127.0.88.{n}" for n in itertools.count(10))
PORT = 20_000 + os.getpid() % 10_000
LEADER_TIMEOUT_S = 15.0
# Elections are wall-clock waits; short ones keep the file fast. Nothing here depends on them
# except the test that proposes before the first election, which uses slower ones.
FAST = RaftTiming(tick_interval_s=0.02, heartbeat_s=0.03, election_min_s=0.1, election_max_s=0.2)


# --- harness ----------------------------------------------------------------------------------


@dataclass
class Committed:
    messages: list[pb.Message] = field(default_factory=list)
    items: list[pb.SendItem] = field(default_factory=list)
    calls: int = 0


class OneNodeGroup:
    """Driver + ReplicatedGroup + GroupMachine + LocalGroup on a directory; reopenable."""

    def __init__(self, directory: Path, timing: RaftTiming | None = None) -> None:
        self.dir = directory
        self.address = f"{next(_hosts)}:{PORT}"
        self.timing = timing or FAST
        self.driver: RaftDriver | None = None
        self.store: Store | None = None
        self.committed = Committed()
        """What the last ``run_pipeline`` handed to fan-out."""

    def open(self) -> LocalGroup:
        self.store = store = Store(self.dir / "db")
        machine = GroupMachine(1, store)
        self.snapshots = snapshots = CheckpointSnapshots(machine, self.dir / "snapshots")
        conf = make_conf(
            password=None,
            bind_address=self.address,
            journal_file=str(self.dir / "raft.journal"),
            dump_file=str(self.dir / "raft.dump"),
            snapshots=snapshots,
            timing=self.timing,
        )
        self.driver = driver = RaftDriver(self.timing.tick_interval_s, name="test")
        driver.start()
        raft = driver.add_group(
            "g1", lambda: ReplicatedGroup(self.address, [], conf, machine, snapshots)
        ).result(10)
        self.machine = machine
        self.local = LocalGroup(1, store, machine, raft, {self.address: 1}.get)
        return self.local

    def close(self) -> None:
        if self.driver is not None:
            self.driver.stop()
            assert not self.driver.thread.is_alive()
            self.driver = None
        if self.store is not None:
            self.store.close()
            self.store = None


@pytest.fixture
def node(tmp_path: Path) -> Iterator[OneNodeGroup]:
    n = OneNodeGroup(tmp_path / "g1")
    try:
        yield n
    finally:
        n.close()


async def wait_leader(local: LocalGroup) -> None:
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    while not local.is_leader():
        assert time.monotonic() < deadline, "the one-node group elected no leader"
        await trio.sleep(0.02)


def item(
    channel_id: str = "g1",
    *,
    ctype: int = GROUP,
    from_uid: str = "u1",
    no: str = "",
    payload: bytes = b"hi",
    **kw: Any,
) -> pb.SendItem:
    return pb.SendItem(
        from_uid=from_uid,
        channel_id=channel_id,
        channel_type=ctype,
        client_msg_no=no,
        payload=payload,
        **kw,
    )


async def make_group(local: LocalGroup, cid: str, subs: list[str], **flags: Any) -> None:
    op = pb.MetaOp(
        channel=pb.ChannelUpdate(channel_id=cid, channel_type=GROUP, add_subscribers=subs, **flags)
    )
    raw = await local.propose(pb.Command(time_ms=int(time.time() * 1000), meta=op), 10)
    assert pb.MetaResult.FromString(raw).reason == ReasonCode.SUCCESS


Outcome = tuple[pb.SendOutcome | None, ProposalError | None]


class Run:
    """A pipeline running on a group inside one ``trio.run``."""

    def __init__(self, local: LocalGroup, pipe: GroupPipeline, committed: Committed) -> None:
        self.local = local
        self.pipe = pipe
        self.committed = committed

    async def submit(self, it: pb.SendItem) -> pb.SendOutcome:
        return (await self.submit_many([it]))[0]

    async def submit_many(self, items: list[pb.SendItem]) -> list[pb.SendOutcome]:
        """Queue all at once (so they can share a batch) and wait for every answer."""
        got = await self.submit_raw(items)
        out = []
        for outcome, error in got:
            assert error is None, error
            assert outcome is not None
            out.append(outcome)
        return out

    async def submit_raw(
        self, items: list[pb.SendItem], check: Callable[[int, pb.SendOutcome], None] | None = None
    ) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(items)
        remaining = [len(items)]
        all_done = trio.Event()

        def make_done(i: int) -> Callable[[pb.SendOutcome | None, ProposalError | None], None]:
            def done(outcome: pb.SendOutcome | None, error: ProposalError | None) -> None:
                if check is not None and outcome is not None:
                    check(i, outcome)
                assert results[i] is None, "answered twice"
                results[i] = (outcome, error)
                remaining[0] -= 1
                if remaining[0] == 0:
                    all_done.set()

            return done

        for i, it in enumerate(items):
            self.pipe.submit_nowait(it, make_done(i))
        with trio.fail_after(30):
            await all_done.wait()
        return [r for r in results if r is not None]


def run_pipeline(
    node: OneNodeGroup,
    scenario: Callable[[Run], Awaitable[T]],
    *,
    setup: Callable[[LocalGroup], Awaitable[None]] | None = None,
    on_committed: Callable[[int, list[pb.Message], list[pb.SendItem]], None] | None = None,
    **kw: Any,
) -> T:
    """Open the node (unless open), wait for leadership, run ``scenario`` with a pipeline."""
    local = node.local if node.driver is not None else node.open()
    committed = Committed()

    def record(group: int, messages: list[pb.Message], items: list[pb.SendItem]) -> None:
        assert group == 1
        assert len(messages) == len(items)
        committed.calls += 1
        committed.messages.extend(messages)
        committed.items.extend(items)
        if on_committed is not None:
            on_committed(group, messages, items)

    kw.setdefault("commit_window_s", 0.001)
    kw.setdefault("max_batch", 64)
    kw.setdefault("proposal_timeout_s", 10.0)

    async def main() -> T:
        await wait_leader(local)
        if setup is not None:
            await setup(local)
        pipe = GroupPipeline(local, record, **kw)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.run)
            result = await scenario(Run(local, pipe, committed))
            nursery.cancel_scope.cancel()
        return result

    node.committed = committed
    return trio.run(main)


def stored(node: OneNodeGroup, cid: str = "g1", ctype: int = GROUP) -> list[Any]:
    assert node.store is not None
    return node.store.messages(ctype, cid, 0, 0, 100_000)


# --- leadership -------------------------------------------------------------------------------


def test_a_send_before_the_group_has_a_leader_is_refused_definitely(tmp_path: Path) -> None:
    # the first election cannot end before election_min_s: room for the checks before it
    node = OneNodeGroup(
        tmp_path / "g1",
        RaftTiming(election_min_s=1.0, election_max_s=1.2, connection_timeout_s=1.5),
    )
    try:
        _before_leader(node)
    finally:
        node.close()


def _before_leader(node: OneNodeGroup) -> None:
    local = node.open()

    async def main() -> tuple[list[Outcome], list[Outcome]]:
        # The first election takes at least election_min_s (1 s); we are well before it.
        assert not local.is_leader() and local.leader_id() is None
        with pytest.raises(ProposalError) as info:
            await local.propose(pb.Command(noop=pb.Noop()), 1)
        assert info.value.kind == "no_leader"
        pipe = GroupPipeline(
            local, lambda *_: None, commit_window_s=0.001, max_batch=8, proposal_timeout_s=5
        )
        run = Run(local, pipe, Committed())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.run)
            before = await run.submit_raw([item("a@b", ctype=PERSON, from_uid="a")])
            await wait_leader(local)
            assert local.leader_id() == 1
            after = await run.submit_raw([item("a@b", ctype=PERSON, from_uid="a")])
            nursery.cancel_scope.cancel()
        return before, after

    before, after = trio.run(main)
    assert before[0][0] is None
    assert before[0][1] is not None and before[0][1].kind == "no_leader"
    outcome, error = after[0]
    assert error is None and outcome is not None and outcome.message_seq == 1
    assert node.store is not None and node.store.head_seq(PERSON, "a@b") == 1


# --- sequences --------------------------------------------------------------------------------


def test_200_concurrent_submits_get_contiguous_seqs_per_channel(node: OneNodeGroup) -> None:
    subs = [f"u{i}" for i in range(10)]
    person = "u2@u1"
    plan: list[pb.SendItem] = []
    for i in range(200):
        if i % 4 == 3:
            plan.append(item(person, ctype=PERSON, from_uid="u1", no=f"p{i}", origin_conn=i))
        else:
            plan.append(item(f"g{i % 4 + 1}", from_uid=subs[i % 10], no=f"c{i}", origin_conn=i))

    async def setup(local: LocalGroup) -> None:
        for cid in ("g1", "g2", "g3"):
            await make_group(local, cid, subs)

    async def scenario(run: Run) -> list[tuple[pb.SendItem, pb.SendOutcome]]:
        results: list[tuple[pb.SendItem, pb.SendOutcome]] = []

        async def one(it: pb.SendItem) -> None:
            results.append((it, await run.submit(it)))

        async with trio.open_nursery() as nursery:
            for it in plan:
                nursery.start_soon(one, it)
        return results

    # a small max_batch forces many batches, so seqs must continue across them
    results = run_pipeline(node, scenario, setup=setup, max_batch=16)
    assert len(results) == 200
    assert all(o.reason == ReasonCode.SUCCESS and not o.duplicate for _, o in results)
    assert node.machine.applied_commands >= 3 + 200 // 16

    by_channel: dict[tuple[int, str], list[pb.SendOutcome]] = defaultdict(list)
    for it, o in results:
        by_channel[(it.channel_type, it.channel_id)].append(o)
    assert {k: len(v) for k, v in by_channel.items()} == {
        (GROUP, "g1"): 50,
        (GROUP, "g2"): 50,
        (GROUP, "g3"): 50,
        (PERSON, person): 50,
    }
    assert node.store is not None
    for (ctype, cid), outs in by_channel.items():
        assert sorted(o.message_seq for o in outs) == list(range(1, 51)), cid
        assert node.store.head_seq(ctype, cid) == 50
        msgs = stored(node, cid, ctype)
        assert [m.message_seq for m in msgs] == list(range(1, 51))
        assert [m.message_id for m in msgs] == sorted(m.message_id for m in msgs)
        # what each sender was told is what was stored
        assert {(o.message_id, o.message_seq) for o in outs} == {
            (m.message_id, m.message_seq) for m in msgs
        }
    assert len({o.message_id for _, o in results}) == 200
    # every message handed to fan-out exactly once, with the item it came from
    committed = node.committed
    assert Counter(m.message_id for m in committed.messages) == Counter(
        o.message_id for _, o in results
    )
    for m, it in zip(committed.messages, committed.items, strict=True):
        assert (m.channel_id, m.from_uid, m.client_msg_no) == (
            it.channel_id,
            it.from_uid,
            it.client_msg_no,
        )
        assert it.origin_conn == int(m.client_msg_no[1:])


# --- dedupe -----------------------------------------------------------------------------------


def test_dedupe_across_batches_and_within_a_batch(node: OneNodeGroup) -> None:
    async def setup(local: LocalGroup) -> None:
        await make_group(local, "g1", ["u1", "u2"])

    async def scenario(run: Run) -> list[list[pb.SendOutcome]]:
        first = await run.submit(item(no="c-1", payload=b"original"))
        retry = await run.submit(item(no="c-1", payload=b"retransmitted"))
        batch = await run.submit_many(
            [item(no="same"), item(no="same"), item(from_uid="u2", no="same"), item(no="c-1")]
        )
        return [[first, retry], batch]

    (first, retry), batch = run_pipeline(node, scenario, setup=setup)
    assert not first.duplicate and retry.duplicate
    assert (retry.message_id, retry.message_seq) == (first.message_id, first.message_seq)
    a, b, c, d = batch
    assert not a.duplicate and b.duplicate and not c.duplicate and d.duplicate
    assert (b.message_id, b.message_seq) == (a.message_id, a.message_seq)
    assert (d.message_id, d.message_seq) == (first.message_id, 1)
    assert (a.message_seq, c.message_seq) == (2, 3)
    assert [m.payload for m in stored(node)] == [b"original", b"hi", b"hi"]
    committed = node.committed
    assert [(m.from_uid, m.client_msg_no) for m in committed.messages] == [
        ("u1", "c-1"),
        ("u1", "same"),
        ("u2", "same"),
    ]


# --- answers and fan-out ----------------------------------------------------------------------


def test_outcomes_come_after_the_data_is_readable_and_the_wal_is_flushed(
    node: OneNodeGroup,
) -> None:
    local = node.open()
    assert node.store is not None
    store = node.store
    machine = node.machine
    lock = threading.Lock()
    index_of: dict[int, int] = {}  # message id -> Raft index of its command
    durable = [0]  # every index <= this was written before a completed WAL fsync
    real_apply, real_flush = machine.apply, store.flush_wal

    def apply(index: int, command: bytes) -> bytes:  # driver thread
        raw = real_apply(index, command)
        if raw and pb.Command.FromString(command).WhichOneof("body") == "send":
            with lock:
                for m in pb.SendBatchResult.FromString(raw).committed:
                    index_of[m.message_id] = index
        return raw

    def flush_wal() -> None:  # worker thread
        covered = store.applied_index()
        real_flush()
        with lock:
            durable[0] = max(durable[0], covered)

    machine.apply = apply  # type: ignore[method-assign]
    store.flush_wal = flush_wal  # type: ignore[method-assign]

    reported: set[int] = set()
    checked: list[int] = []

    def check(i: int, outcome: pb.SendOutcome) -> None:
        found = store.get_message(GROUP, "g1", outcome.message_seq)
        assert found is not None and found.message_id == outcome.message_id
        assert store.head_seq(GROUP, "g1") >= outcome.message_seq
        with lock:
            assert durable[0] >= index_of[outcome.message_id], "answered before the fsync"
        reported.add(outcome.message_id)
        checked.append(i)

    def in_fan_out(_g: int, messages: list[pb.Message], _items: list[pb.SendItem]) -> None:
        # fan-out comes after the acknowledgement of the whole batch, never before
        assert all(m.message_id in reported for m in messages)

    async def setup(local: LocalGroup) -> None:
        await make_group(local, "g1", ["u1"])

    async def scenario(run: Run) -> None:
        for round_ in range(3):
            await run.submit_raw([item(no=f"n{round_}-{i}") for i in range(20)], check)

    assert local is node.local
    run_pipeline(node, scenario, setup=setup, on_committed=in_fan_out, max_batch=8)
    assert len(checked) == 60
    assert len(node.committed.messages) == 60


def test_on_committed_gets_exactly_the_new_messages_with_their_items(node: OneNodeGroup) -> None:
    async def setup(local: LocalGroup) -> None:
        await make_group(local, "g1", ["u1"])
        await make_group(local, "gone", ["u1"], disband=True)

    async def scenario(run: Run) -> list[pb.SendOutcome]:
        await run.submit(item(no="old"))
        return await run.submit_many(
            [
                item(no="new", origin_node=3, origin_conn=11, topic="t"),
                item(no="old", origin_conn=12),  # duplicate
                item(from_uid="stranger", no="x", origin_conn=13),  # refused
                item("gone", no="y", origin_conn=14),  # refused
                item(no="np", flags=HeaderFlag.NO_PERSIST, origin_conn=15),  # transient
                item("u1@u2", ctype=PERSON, from_uid="u2", no="p", origin_conn=16),
            ]
        )

    outs = run_pipeline(node, scenario, setup=setup)
    assert [o.reason for o in outs] == [
        ReasonCode.SUCCESS,
        ReasonCode.SUCCESS,
        ReasonCode.SUBSCRIBER_NOT_EXIST,
        ReasonCode.DISBAND,
        ReasonCode.SUCCESS,
        ReasonCode.SUCCESS,
    ]
    committed = node.committed
    assert committed.calls == 2  # one per batch that made something new
    new = committed.messages[1:]
    items = committed.items[1:]
    assert [m.client_msg_no for m in new] == ["new", "np", "p"]
    assert [it.origin_conn for it in items] == [11, 15, 16]
    assert items[0].origin_node == 3 and items[0].topic == "t"
    assert [m.message_id for m in new] == [
        outs[0].message_id,
        outs[4].message_id,
        outs[5].message_id,
    ]
    assert [m.message_seq for m in new] == [2, 0, 1]
    assert new[1].flags & HeaderFlag.NO_PERSIST


def test_a_full_queue_answers_at_once_and_the_pipeline_goes_on(node: OneNodeGroup) -> None:
    local = node.open()
    got: list[Outcome] = []

    async def main() -> None:
        await wait_leader(local)
        pipe = GroupPipeline(
            local,
            lambda *_: None,
            commit_window_s=0.001,
            max_batch=8,
            proposal_timeout_s=10,
            queue_size=1,
        )
        both = trio.Event()

        def done(outcome: pb.SendOutcome | None, error: ProposalError | None) -> None:
            got.append((outcome, error))
            if len(got) == 2:
                both.set()

        person = {"ctype": PERSON, "from_uid": "a"}
        pipe.submit_nowait(item("a@b", no="1", **person), done)
        pipe.submit_nowait(item("a@b", no="2", **person), done)  # no room
        # the refusal is immediate, before the loop ever ran, and says "unknown": retry
        assert len(got) == 1 and got[0][0] is None
        assert got[0][1] is not None and got[0][1].kind == "unknown"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.run)
            with trio.fail_after(30):
                await both.wait()
            nursery.cancel_scope.cancel()

    trio.run(main)
    outcome = got[1][0]
    assert outcome is not None and outcome.message_seq == 1
    assert [m.client_msg_no for m in stored(node, "a@b", PERSON)] == ["1"]


# --- reads ------------------------------------------------------------------------------------


def test_read_barrier_then_query_sees_acknowledged_writes(node: OneNodeGroup) -> None:
    async def setup(local: LocalGroup) -> None:
        await make_group(local, "g1", ["u1"])

    async def scenario(run: Run) -> None:
        local = run.local
        machine = local.machine
        for i in range(5):
            out = await run.submit(item(no=f"n{i}"))
            await local.read_barrier(5)
            q = {"q": "messages", "channel_type": GROUP, "channel_id": "g1", "limit": 1}
            got = run_query(local.store, q)
            assert got["head"] == out.message_seq == i + 1
            assert got["messages"][0]["message_id"] == out.message_id
        # reads arriving together share one barrier (one no-op command)
        before = machine.applied_commands
        heads: list[int] = []

        async def read() -> None:
            await local.read_barrier(5)
            heads.append(
                run_query(local.store, {"q": "head", "channel_type": GROUP, "channel_id": "g1"})
            )

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(read)
        assert heads == [5] * 10
        assert machine.applied_commands == before + 1
        # and a barrier after that is a new one
        await local.read_barrier(5)
        assert machine.applied_commands == before + 2

    run_pipeline(node, scenario, setup=setup)


# --- durability -------------------------------------------------------------------------------


def _durability(node: OneNodeGroup) -> None:
    async def setup(local: LocalGroup) -> None:
        await make_group(local, "g1", ["u1"])

    def sends(prefix: str, n: int) -> Callable[[Run], Awaitable[list[pb.SendOutcome]]]:
        async def scenario(run: Run) -> list[pb.SendOutcome]:
            out: list[pb.SendOutcome] = []

            async def one(i: int) -> None:
                out.append(
                    await run.submit(item(no=f"{prefix}{i}", payload=f"{prefix}{i}".encode()))
                )

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, i)
            return out

        return scenario

    first = run_pipeline(node, sends("a", 30), setup=setup, max_batch=4)
    assert all(o.reason == ReasonCode.SUCCESS for o in first)
    applied_before = node.machine.applied_index()
    commands_before = node.machine.applied_commands
    assert commands_before >= 1 + 30 // 4
    node.close()

    # a restart on the same directories and address: the journal is replayed into the store
    node.open()
    assert node.machine.applied_index() == applied_before
    second = run_pipeline(node, sends("b", 5), max_batch=1)
    # no command of the first life was applied again: only the five new batches were
    assert node.machine.applied_commands == 5
    assert node.machine.applied_index() > applied_before
    msgs = stored(node)
    assert [m.message_seq for m in msgs] == list(range(1, 36))
    assert {(m.message_id, m.message_seq) for m in msgs[:30]} == {
        (o.message_id, o.message_seq) for o in first
    }
    assert sorted(o.message_seq for o in second) == list(range(31, 36))
    assert min(o.message_id for o in second) > max(o.message_id for o in first)
    assert node.store is not None
    assert node.store.get_dedupe(GROUP, "g1", "u1", "a17") is not None

    # a retry of a message of the first life is still a duplicate
    retry = run_pipeline(node, lambda run: run.submit(item(no="a3")))
    assert retry.duplicate
    assert node.machine.applied_commands == 6
    assert len(stored(node)) == 35


def test_acknowledged_messages_survive_a_restart_and_nothing_is_applied_twice(
    node: OneNodeGroup,
) -> None:
    _durability(node)
    assert node.snapshots.taken == 0


def test_restart_after_log_compaction(tmp_path: Path) -> None:
    """With a compacted log the restart loads the local snapshot (the store already holds it)
    and replays only the journal after it."""
    node = OneNodeGroup(
        tmp_path / "g1",
        RaftTiming(
            tick_interval_s=0.02,
            heartbeat_s=0.03,
            election_min_s=0.1,
            election_max_s=0.2,
            compaction_entries=8,
        ),
    )
    try:
        _durability(node)
        assert node.snapshots.installed == 0
        assert list((tmp_path / "g1" / "snapshots").glob("ckpt-*"))
    finally:
        node.close()


def test_a_batch_released_twice_or_behind_the_release_point_breaks_an_invariant() -> None:
    """Fan-out follows log order because each batch number is released once, in order; a
    second release would deliver its messages twice, or out of order."""
    fanned: list[int] = []

    def on_committed(_group: int, messages: list[pb.Message], _items: list[pb.SendItem]) -> None:
        fanned.extend(m.message_seq for m in messages)

    group = SimpleNamespace(group_id=1)
    pipe = GroupPipeline(
        group,  # type: ignore[arg-type]  # _release reads only group_id
        on_committed,
        commit_window_s=0.001,
        max_batch=8,
        proposal_timeout_s=1,
    )
    pipe._release(1, ([pb.Message(message_seq=2)], []))
    assert fanned == []  # batch 0 first
    pipe._release(0, ([pb.Message(message_seq=1)], []))
    assert fanned == [1, 2]
    for number in (0, 1):
        with pytest.raises(InvariantViolation, match="released once, in log order"):
            pipe._release(number, None)
    pipe._release(3, None)
    with pytest.raises(InvariantViolation):
        pipe._release(3, None)  # held, not yet released: still a second release
