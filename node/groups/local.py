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

    async def propose(self, command: pb.Command, timeout_s: float) -> bytes:
        """Replicate ``command`` and return its apply result once committed and applied here."""
        if not self.is_leader():
            raise ProposalError("not_leader" if self.raft._getLeader() else "no_leader")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[tuple[Any, int]] = []

        def finish(result: Any, error: int) -> None:
            box.append((result, error))
            done.set()

        def callback(result: Any, error: int) -> None:  # on the Raft driver thread
            # trio may have finished (node stopping); the outcome then has no one to go to.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finish, result, error)

        self.raft.apply(command.SerializeToString(), callback=callback)
        with trio.move_on_after(timeout_s):
            await done.wait()
        if not box:
            raise ProposalError("unknown", f"no outcome within {timeout_s} s")
        result, error = box[0]
        if error == FAIL_REASON.SUCCESS:
            return bytes(result or b"")
        raise ProposalError(_DEFINITE.get(error, "unknown"), f"pysyncobj reason {error}")

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


class _Barrier:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.proposed = False
        self.error: ProposalError | None = None
