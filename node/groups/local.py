"""This node's replica of one slot group, seen from trio: propose, read barrier, leadership."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import trio
from pysyncobj import FAIL_REASON

from cluster.raft.group import ReplicatedGroup
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
    ) -> None:
        self.group_id = group_id
        self.store = store
        self.machine = machine
        self.raft = raft
        self._node_of_address = node_of_address
        self._barrier: _Barrier | None = None

    def is_leader(self) -> bool:
        return bool(self.raft._isLeader())

    def leader_id(self) -> int | None:
        leader = self.raft._getLeader()
        if leader is None:
            return None
        return self._node_of_address(str(getattr(leader, "address", leader)))

    def propose_start(self, command: pb.Command) -> Proposal:
        """Queue ``command`` in Raft now (proposals keep the order of these calls)."""
        if not self.is_leader():
            raise ProposalError("not_leader" if self.raft._getLeader() else "no_leader")
        proposal = Proposal()
        self.raft.apply(command.SerializeToString(), callback=proposal.callback)
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

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        self._box: list[tuple[Any, int]] = []

    def _finish(self, result: Any, error: int) -> None:
        self._box.append((result, error))
        self._done.set()

    def callback(self, result: Any, error: int) -> None:  # on the Raft driver thread
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
