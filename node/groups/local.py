"""This node's replica of one slot group, seen from trio: propose, read barrier, leadership."""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import trio
from pysyncobj import FAIL_REASON

from cluster.raft.conf import MAX_COMMAND_BYTES
from cluster.raft.driver import RaftDriver
from cluster.raft.group import GroupView, ReplicatedGroup
from proto.raftchat.peer.v1 import peer_pb2 as pb

from ..storage import Store
from .machine import GroupMachine


class ProposalError(Exception):
    """A proposal did not (or may not have) committed here.

    ``kind``: ``not_leader`` (this node does not lead the group; definite), ``no_leader``
    (no leader is known; definite), ``unknown`` (timed out or lost in a leader change: it may
    still commit, so retry with the same dedupe keys)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class CommandTooLarge(Exception):
    """A command above ``MAX_COMMAND_BYTES``: a bug in whoever built it, never proposed."""


_DEFINITE = {
    FAIL_REASON.NOT_LEADER: "not_leader",
    FAIL_REASON.MISSING_LEADER: "no_leader",
    FAIL_REASON.QUEUE_FULL: "no_leader",
}


class LocalGroup:
    def __init__(
        self,
        group_id: int,
        store: Store,
        machine: GroupMachine,
        raft: ReplicatedGroup,
        node_of_address: Callable[[str], int | None],
        flusher: CommitFlusher | None = None,
    ) -> None:
        self.group_id = group_id
        self.store = store
        self.machine = machine
        self.raft = raft
        self._node_of_address = node_of_address
        self._flusher = flusher
        self._barrier: _Barrier | None = None
        self._news = trio.Event()
        self._news_token: trio.lowlevel.TrioToken | None = None
        raft.on_leader_news = self._on_leader_news

    def _on_leader_news(self) -> None:  # on the Raft driver thread
        token = self._news_token
        if token is not None:  # None until someone waited: then nobody needs the news
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._publish_news)

    def _publish_news(self) -> None:
        self._news.set()
        self._news = trio.Event()

    async def leader_news(self, timeout_s: float) -> None:
        """Return once this replica learns of a different leader (or of none), at the latest
        after ``timeout_s``: a request that failed on the old leader retries at once."""
        if self._news_token is None:
            self._news_token = trio.lowlevel.current_trio_token()
        with trio.move_on_after(timeout_s):
            await self._news.wait()

    async def make_durable(self) -> None:
        """After a successful proposal: make the store's WAL durable, unless already done."""
        if self._flusher is None:
            await trio.to_thread.run_sync(self.store.flush_wal)

    @property
    def view(self) -> GroupView:
        """The replica's Raft state as of the driver's last tick of it (``GroupView``)."""
        view: GroupView = self.raft.view
        return view

    def is_leader(self) -> bool:
        return self.view.is_leader

    def leader_id(self) -> int | None:
        leader = self.view.leader
        return None if leader is None else self._node_of_address(leader)

    def follower_matches(self) -> dict[int, int]:
        """On a leader: each follower's node id -> the highest log index known to be replicated
        there (empty on a follower)."""
        out: dict[int, int] = {}
        for address, index in self.view.matches:
            node_id = self._node_of_address(address)
            if node_id is not None:
                out[node_id] = index
        return out

    def behind(self) -> int:
        """Entries the leader has committed that this replica has not applied yet (on a
        follower, as of the leader's last message; on the leader, its own apply backlog)."""
        view = self.view
        return max(0, view.leader_commit - view.applied_index)

    def has_quorum(self) -> bool:
        """Whether this replica is connected to a majority of its group (pysyncobj's view)."""
        return self.view.has_quorum

    def propose_start(self, command: pb.Command) -> Proposal:
        """Queue ``command`` in Raft now (proposals keep the order of these calls)."""
        if not self.is_leader():
            raise ProposalError("not_leader" if self.view.leader else "no_leader")
        raw = command.SerializeToString()
        if len(raw) > MAX_COMMAND_BYTES:
            # Callers bound what they propose (send batches, the HTTP 413 check); an entry this
            # big would go through pysyncobj's faulty chunked transmission (cluster/raft/conf.py).
            raise CommandTooLarge(f"command of {len(raw)} bytes, at most {MAX_COMMAND_BYTES}")
        proposal = Proposal(self._flusher, self.store)
        self.raft.apply(raw, callback=proposal.callback)
        return proposal

    async def propose(self, command: pb.Command, timeout_s: float) -> bytes:
        """Replicate ``command`` and return its apply result once committed and applied here."""
        return await self.propose_start(command).result(timeout_s)

    async def read_barrier(self, timeout_s: float) -> None:
        """Return once every command committed before this call is applied here, and this node
        was leader for it: a no-op is committed, shared by the reads that join before it is
        proposed. A deposed leader cannot commit it, so it cannot serve a stale read."""
        barrier = self._barrier
        if barrier is None or barrier.proposed:
            barrier = self._barrier = _Barrier()
            trio.lowlevel.spawn_system_task(self._run_barrier, barrier, timeout_s)
        await barrier.done.wait()
        if barrier.error is not None:
            raise barrier.error

    async def _run_barrier(self, barrier: _Barrier, timeout_s: float) -> None:
        await trio.lowlevel.checkpoint()  # let reads arriving in this same moment join
        barrier.proposed = True
        if self._barrier is barrier:
            self._barrier = None
        try:
            await self.propose(
                pb.Command(time_ms=int(time.time() * 1000), noop=pb.Noop()), timeout_s
            )
        except ProposalError as e:
            barrier.error = e
        barrier.done.set()


class Proposal:
    """The pending outcome of one proposal, filled from the Raft driver thread."""

    def __init__(self, flusher: CommitFlusher | None = None, store: Store | None = None) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        self._box: list[tuple[Any, int]] = []
        self._flusher = flusher
        self._store = store

    def _finish(self, result: Any, error: int) -> None:
        self._box.append((result, error))
        self._done.set()

    def callback(self, result: Any, error: int) -> None:  # usually on the Raft driver thread
        if self._flusher is not None and self._flusher.on_driver_thread():
            self._flusher.add(self, result, error, self._store)
            return
        # trio may have finished (node stopping); the outcome then has no one to go to.
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._finish, result, error)

    async def result(self, timeout_s: float) -> bytes:
        with trio.move_on_after(timeout_s):
            await self._done.wait()
        if not self._box:
            raise ProposalError("unknown", f"no outcome within {timeout_s} s")
        result, error = self._box[0]
        if error == FAIL_REASON.SUCCESS:
            return bytes(result or b"")
        raise ProposalError(_DEFINITE.get(error, "unknown"), f"pysyncobj reason {error}")


class _Barrier:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.proposed = False
        self.error: ProposalError | None = None


_Completion = tuple[Proposal, Any, int, Store | None]


class CommitFlusher:
    """Makes committed proposals durable, with one fsync per store for many proposals.

    The Raft driver hands each pass's outcomes over at the end of the pass; a thread of this
    flusher (``flush_wal`` releases the GIL, so Raft goes on meanwhile) takes everything handed
    over since its last round, fsyncs the WAL of every store that applied a successful
    proposal once, and gives all the outcomes to trio in one hand-off. Per batch, that replaces
    a trio worker-thread round trip for the fsync and a trio wake-up per proposal."""

    def __init__(self, driver: RaftDriver) -> None:
        self._driver = driver
        self._token = trio.lowlevel.current_trio_token()
        self._pending: list[_Completion] = []
        self._handed: queue.SimpleQueue[list[_Completion] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="wal-flusher", daemon=True)
        self._thread.start()
        driver.add_after_pass(self._after_pass)

    def on_driver_thread(self) -> bool:
        return threading.current_thread() is self._driver.thread

    def add(self, proposal: Proposal, result: Any, error: int, store: Store | None) -> None:
        self._pending.append((proposal, result, error, store))  # driver thread only

    def stop(self) -> None:
        self._handed.put(None)
        self._thread.join(10)

    def _after_pass(self) -> None:  # driver thread
        if self._pending:
            pending, self._pending = self._pending, []
            self._handed.put(pending)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._handed.get()
            if first is None:
                return
            pending = list(first)
            with contextlib.suppress(queue.Empty):
                while True:
                    more = self._handed.get_nowait()
                    if more is None:
                        stopping = True  # this round still answers what came before stop()
                        break
                    pending.extend(more)
            ok = FAIL_REASON.SUCCESS
            stores = {id(s): s for _, _, error, s in pending if s is not None and error == ok}
            try:
                for store in stores.values():
                    store.flush_wal()
            except Exception as e:
                # No honest answer is left for these writes: stop the node, as a failed fsync
                # in trio would (the exception ends the trio run).
                self._hand_over(functools.partial(_raise, e))
                continue
            self._hand_over(functools.partial(_finish_all, pending))

    def _hand_over(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)


def _finish_all(pending: list[_Completion]) -> None:
    for proposal, result, error, _ in pending:
        proposal._finish(result, error)


def _raise(error: Exception) -> None:
    raise error
