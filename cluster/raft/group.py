"""A Raft group that replicates opaque command bytes into a state machine.

The state machine keeps its state outside pysyncobj (RocksDB for slot groups) and records the
Raft index of every command it applies, atomically with the command's effects, so that a
journal replay after a restart skips what is already applied.
"""

from __future__ import annotations

from typing import Protocol

from pysyncobj import SyncObj, SyncObjConf, replicated

from .snapshot import CheckpointSnapshots, install_checkpoint_transmitter


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


class ReplicatedGroup(SyncObj):  # type: ignore[misc]
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
        super().__init__(self_addr, partners, conf)
        if snapshots is not None:
            install_checkpoint_transmitter(self, snapshots)

    def _SyncObj__applyLogEntries(self) -> bool:  # overrides pysyncobj 0.3.17 internals
        # With appendEntriesUseBatch off, pysyncobj follows every apply with an AppendEntries
        # round whose only news is the commit index: four more Raft messages per batch in a
        # three-node group. New entries still go out at once (pysyncobj sends them when it
        # queues them); the commit index reaches followers with the next entries or the next
        # heartbeat. Followers then apply up to one heartbeat later, which nothing waits for:
        # answers, fan-out and reads all come from the leader.
        SyncObj._SyncObj__applyLogEntries(self)
        return False

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, command: bytes) -> bytes:
        # pysyncobj advances raftLastApplied after the call, so this command's index is +1.
        index = int(self.raftLastApplied) + 1
        return self._machine.apply(index, command)
