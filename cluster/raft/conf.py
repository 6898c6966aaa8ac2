"""pysyncobj settings for raftchat's groups, tuned together (stack findings §2)."""

from __future__ import annotations

from dataclasses import dataclass

from pysyncobj import SyncObjConf

from .snapshot import CheckpointSnapshots

MAX_ENTRY_BYTES = 4 * 1024 * 1024
"""pysyncobj's ``appendEntriesBatchSizeBytes``. An entry above it is sent in chunks, and
pysyncobj 0.3.17 labels the wrong chunk as the last one for some sizes (the follower then
unpickles a truncated entry, forever), so no command may come near it. It also bounds one
AppendEntries when a follower catches up (pysyncobj's receive buffer grows by concatenation,
so far larger messages would cost quadratic copying)."""
MAX_COMMAND_BYTES = MAX_ENTRY_BYTES - 64 * 1024
"""The largest command raftchat proposes (room left for pysyncobj's framing)."""


@dataclass(frozen=True)
class RaftTiming:
    tick_interval_s: float = 0.05
    """The driver's poll timeout when nothing happens (heartbeats, election deadlines)."""
    heartbeat_s: float = 0.1
    """``appendEntriesPeriod``: a leader's idle AppendEntries interval. Idle heartbeats are
    most of an idle node's CPU, but 0.15 s (under 4 % of a core instead of 6 %) left too thin a
    margin under the election timeout on a starved machine (ADR 024)."""
    election_min_s: float = 0.5
    election_max_s: float = 1.0
    connection_timeout_s: float = 1.0
    connection_retry_s: float = 0.3
    """Must be short together with the timeouts: followers can only start an election while
    connected to someone, and the default 5 s retry made failover take seconds."""
    leader_fallback_s: float = 1.5
    """A leader without a majority for this long steps down (default 30 s)."""
    compaction_entries: int = 5000
    compaction_interval_s: float = 300.0


def make_conf(
    *,
    password: str | tuple[str, ...] | None,
    bind_address: str,
    journal_file: str,
    dump_file: str,
    snapshots: CheckpointSnapshots | None,
    timing: RaftTiming,
) -> SyncObjConf:
    kwargs = {}
    if snapshots is not None:
        kwargs = {"serializer": snapshots.serialize, "deserializer": snapshots.deserialize}
    return SyncObjConf(
        autoTick=False,
        appendEntriesUseBatch=False,
        appendEntriesBatchSizeBytes=MAX_ENTRY_BYTES,
        appendEntriesPeriod=timing.heartbeat_s,
        raftMinTimeout=timing.election_min_s,
        raftMaxTimeout=timing.election_max_s,
        connectionTimeout=timing.connection_timeout_s,
        connectionRetryTime=timing.connection_retry_s,
        leaderFallbackTimeout=timing.leader_fallback_s,
        bindAddress=bind_address,
        # One attempt: pysyncobj's default (retry forever) spins in the constructor on a port
        # that is taken or an address that is not local, and the node hangs with it.
        maxBindRetries=1,
        password=password,
        journalFile=journal_file,
        fullDumpFile=dump_file,
        useFork=False,
        dynamicMembershipChange=True,
        logCompactionMinEntries=timing.compaction_entries,
        logCompactionMinTime=timing.compaction_interval_s,
        commandsWaitLeader=True,
        **kwargs,
    )
