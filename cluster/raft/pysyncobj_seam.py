"""The one module that reaches into pysyncobj's internals.

raftchat changes pysyncobj 0.3.17 in three ways: it overrides private steps of ``SyncObj`` and
``TcpConnection`` (name-mangled methods such as ``__onMessageReceived``), it reads and sets
their private state (the commit index, the log, the election deadline), and it replaces a few
of pysyncobj's module-level names process-wide (the encryptor, zlib, the connection and server
classes, the poller factory). Each of those is written against one version's source, so all of
them live here, behind names of ours, and this module refuses to load against another version:
a new pysyncobj means re-reading what is below, once.

The rest of ``cluster.raft`` subclasses ``SyncObjHooks`` and ``ConnectionHooks`` and overrides
their plainly named hooks, and calls the functions here for the state. The hooks and the
state functions run on the Raft driver thread, which owns the groups (``driver.py``): other
threads read a group's ``GroupView`` (``group.py``), published after each of its ticks.
pysyncobj's message dicts ("type", "prevLogIdx", ...) are its wire protocol, the data the hooks
receive, not state: ``follower.py`` reads them.

``tests/unit/test_pysyncobj_seam.py`` checks that no other module of ``cluster`` or ``node``
reaches these internals.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any

PYSYNCOBJ_VERSION = "0.3.17"
"""The pysyncobj whose source everything here was written against (pinned in pyproject.toml)."""


def check_version(found: str) -> None:
    """Refuse any pysyncobj but ``PYSYNCOBJ_VERSION``, naming both."""
    if found != PYSYNCOBJ_VERSION:
        raise ImportError(
            f"cluster.raft.pysyncobj_seam overrides and reads pysyncobj {PYSYNCOBJ_VERSION} "
            f"internals, but pysyncobj {found} is installed: install {PYSYNCOBJ_VERSION} "
            "(pyproject.toml pins it), or re-check every override and accessor in this module "
            "against the new source before changing PYSYNCOBJ_VERSION"
        )


# Before pysyncobj's private names are imported: another version may lack them, and this
# message says why better than an ImportError about ``_RAFT_STATE``.
check_version(importlib.metadata.version("pysyncobj"))

import pysyncobj.syncobj as _syncobj  # noqa: E402
import pysyncobj.tcp_connection as _tcp_connection  # noqa: E402
import pysyncobj.tcp_server as _tcp_server  # noqa: E402
import pysyncobj.transport as _transport  # noqa: E402
from pysyncobj import SyncObj  # noqa: E402
from pysyncobj.journal import FileJournal  # noqa: E402
from pysyncobj.monotonic import monotonic as _raft_clock  # noqa: E402
from pysyncobj.syncobj import _RAFT_STATE  # noqa: E402
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection  # noqa: E402
from pysyncobj.tcp_server import TcpServer  # noqa: E402

# --- process-wide changes ------------------------------------------------------------------------


def install(
    *,
    get_encryptor: Callable[[Any], Any],
    compression: Any,
    connection: type,
    server: type,
) -> None:
    """Every process-wide replacement raftchat makes in pysyncobj (idempotent): the encryptor
    factory its groups call with the password, the module its TCP connections compress with,
    and the classes its server and transport build connections and servers from."""
    _syncobj.getEncryptor = get_encryptor
    _tcp_connection.zlib = compression
    _tcp_server.TcpConnection = connection
    _transport.TcpConnection = connection
    _transport.TcpServer = server


@contextlib.contextmanager
def group_poller(poller: Any) -> Iterator[None]:
    """Make the next ``SyncObj`` constructed on this thread use ``poller`` (pysyncobj builds its
    own from ``createPoller``, with no way to pass one in)."""
    original = _syncobj.createPoller
    _syncobj.createPoller = lambda _kind: poller
    try:
        yield
    finally:
        _syncobj.createPoller = original


def store_commit_index_on_change(journal: Any) -> None:
    """pysyncobj 0.3.17's file journal marks its meta file stale on every
    ``setRaftCommitIndex`` and rewrites it (a write and a rename) within a second; a follower
    calls that on every AppendEntries, heartbeats included, so each idle follower rewrote an
    unchanged file (a write and a rename, ~0.2 ms of CPU) every second per group."""
    if not isinstance(journal, FileJournal):
        return
    set_index = journal.setRaftCommitIndex

    def set_if_changed(index: int) -> None:
        if index != journal.getRaftCommitIndex():
            set_index(index)

    journal.setRaftCommitIndex = set_if_changed


# --- SyncObj's private steps, as hooks ---------------------------------------------------------


class SyncObjHooks(SyncObj):  # type: ignore[misc]
    """pysyncobj's ``SyncObj`` whose private steps a subclass overrides under plain names.
    Each hook's default is pysyncobj's own step; an override calls ``super()`` for it."""

    def _onTick(self, timeToWait: float = 0.0) -> None:
        self.on_tick(timeToWait)

    def on_tick(self, wait_s: float) -> None:
        """One tick (``doTick`` calls it)."""
        SyncObj._onTick(self, wait_s)

    def _SyncObj__applyLogEntries(self) -> Any:
        return self.apply_log_entries()

    def apply_log_entries(self) -> Any:
        """Apply the committed entries; true asks for an AppendEntries round at once."""
        return SyncObj._SyncObj__applyLogEntries(self)

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        self.on_message(node, message)

    def on_message(self, node: Any, message: Any) -> None:
        """A Raft message from a member."""
        handle_message(self, node, message)

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
        self.load_snapshot(clearJournal)

    def load_snapshot(self, clear_journal: bool) -> None:
        """Load the snapshot file: at start-up (``clear_journal`` false), or one a leader sent."""
        load_snapshot(self, clear_journal)

    def _SyncObj__sendAppendEntries(self) -> None:
        self.send_append_entries()

    def send_append_entries(self) -> None:
        """A leader's AppendEntries round to every member."""
        SyncObj._SyncObj__sendAppendEntries(self)

    def _SyncObj__sendNextNodeIdx(
        self, node: Any, reset: bool = False, nextNodeIdx: Any = None, success: bool = False
    ) -> None:
        self.answer_leader(node, reset, nextNodeIdx, success)

    def answer_leader(self, node: Any, reset: bool, next_index: Any, success: bool) -> None:
        """A follower's answer to an AppendEntries."""
        answer_leader(self, node, reset=reset, next_index=next_index, success=success)

    def _SyncObj__onNodeConnected(self, node: Any) -> None:
        self.on_node_connected(node)

    def on_node_connected(self, node: Any) -> None:
        SyncObj._SyncObj__onNodeConnected(self, node)

    def _SyncObj__onNodeDisconnected(self, node: Any) -> None:
        self.on_node_disconnected(node)

    def on_node_disconnected(self, node: Any) -> None:
        SyncObj._SyncObj__onNodeDisconnected(self, node)


# pysyncobj's own steps, whatever a group overrides: for the code that stands in front of them.


def handle_message(g: Any, node: Any, message: Any) -> None:
    """pysyncobj's handling of a Raft message."""
    SyncObj._SyncObj__onMessageReceived(g, node, message)


def load_snapshot(g: Any, clear_journal: bool) -> None:
    """pysyncobj's load of the snapshot file (with ``clear_journal``, of one a leader sent)."""
    SyncObj._SyncObj__loadDumpFile(g, clear_journal)


def answer_leader(
    g: Any, node: Any, *, reset: bool = False, next_index: Any = None, success: bool = False
) -> None:
    """pysyncobj's answer to an AppendEntries: ``next_index`` (None: the log's end)."""
    SyncObj._SyncObj__sendNextNodeIdx(g, node, reset=reset, nextNodeIdx=next_index, success=success)


def destroy_now(g: Any) -> None:
    """Close the group's sockets and journal now (``destroy()`` only flags a group that is not
    ticked by its own thread)."""
    g._doDestroy()


# --- a group's Raft state (driver thread only) ---------------------------------------------------


def is_leader(g: Any) -> bool:
    return bool(g._SyncObj__raftState == _RAFT_STATE.LEADER)


def is_candidate(g: Any) -> bool:
    return bool(g._SyncObj__raftState == _RAFT_STATE.CANDIDATE)


def is_follower(g: Any) -> bool:
    return bool(g._SyncObj__raftState == _RAFT_STATE.FOLLOWER)


def term(g: Any) -> int:
    return int(g._SyncObj__raftCurrentTerm)


def leader(g: Any) -> Any:
    """The leader this replica knows (a pysyncobj ``Node``; itself on a leader), or None."""
    return g._SyncObj__raftLeader


def commit_index(g: Any) -> int:
    return int(g._SyncObj__raftCommitIndex)


def set_commit_index(g: Any, index: int) -> None:
    """Move the commit index, in memory and in the journal, as pysyncobj does."""
    g._SyncObj__raftCommitIndex = index
    g._SyncObj__raftLog.setRaftCommitIndex(index)


def leader_commit_index(g: Any) -> int | None:
    """The leader's commit index as of its last message (None before one)."""
    value = g._SyncObj__leaderCommitIndex
    return None if value is None else int(value)


def set_leader_commit_index(g: Any, index: Any) -> None:
    g._SyncObj__leaderCommitIndex = index


def last_applied(g: Any) -> int:
    """Raft's applied index: election no-ops included."""
    return int(g._SyncObj__raftLastApplied)


def other_nodes(g: Any) -> set[Any]:
    """The other members (pysyncobj ``Node``s); pysyncobj's own set, not a copy."""
    nodes: set[Any] = g._SyncObj__otherNodes
    return nodes


def match_indexes(g: Any) -> dict[Any, int]:
    """On a leader: each member's highest replicated index (pysyncobj's own dict)."""
    matches: dict[Any, int] = g._SyncObj__raftMatchIndex
    return matches


def next_indexes(g: Any) -> dict[Any, int]:
    """On a leader: each member's next index to send (pysyncobj's own dict, to change)."""
    nexts: dict[Any, int] = g._SyncObj__raftNextIndex
    return nexts


def has_quorum(g: Any) -> bool:
    return bool(g.hasQuorum)


def journal(g: Any) -> Any:
    """The group's log (pysyncobj's journal: entries ``(command, index, term)``)."""
    return g._SyncObj__raftLog


def last_log_index(g: Any) -> int:
    return int(g._SyncObj__getCurrentLogIndex())


def last_log_term(g: Any) -> int:
    return int(g._SyncObj__getCurrentLogTerm())


def entries_from(g: Any, index: int) -> list[Any]:
    """The log's entries from ``index`` on."""
    entries: list[Any] = g._SyncObj__getEntries(index)
    return entries


def conf(g: Any) -> Any:
    """The group's ``SyncObjConf``."""
    return g._SyncObj__conf


def serializer(g: Any) -> Any:
    """What writes, reads and transmits the group's snapshots."""
    return g._SyncObj__serializer


def set_serializer(g: Any, value: Any) -> None:
    g._SyncObj__serializer = value


def set_election_timeout(g: Any, seconds: float) -> None:
    """Let the current election round (or the wait for a leader) end ``seconds`` from now."""
    g._SyncObj__raftElectionDeadline = _raft_clock() + seconds


def open_connection(g: Any, node: Any) -> Any:
    """The connection to member ``node`` if it is not disconnected, else None. The connection
    itself, not the transport: pysyncobj reports an outgoing link as connected just before it
    marks it so, and the transport refuses to send on it."""
    conn = g._SyncObj__transport._connections.get(node)
    if conn is None or conn.state == CONNECTION_STATE.DISCONNECTED:
        return None
    return conn


# --- TcpConnection's and TcpServer's private steps, as hooks -----------------------------------


class ConnectionHooks(TcpConnection):  # type: ignore[misc]
    """pysyncobj's ``TcpConnection`` whose private reading steps a subclass overrides under plain
    names (each default is pysyncobj's own step)."""

    # pysyncobj's, set in TcpConnection.__init__ (declared for mypy, which cannot see them)
    _TcpConnection__readBuffer: bytes

    def _TcpConnection__processConnection(self, descr: int, event: int) -> None:
        self.on_socket_event(descr, event)

    def on_socket_event(self, descr: int, event: int) -> None:
        """The poller's event on the connection's socket."""
        TcpConnection._TcpConnection__processConnection(self, descr, event)

    def _TcpConnection__processRead(self) -> bool:
        return self.read_once()

    def read_once(self) -> bool:
        """One ``recv`` into ``read_buffer``; true to read again."""
        return bool(TcpConnection._TcpConnection__processRead(self))

    def _TcpConnection__processParseMessage(self) -> Any:
        return self.parse_message()

    def parse_message(self) -> Any:
        """The next whole message taken off ``read_buffer``, or None."""
        return TcpConnection._TcpConnection__processParseMessage(self)

    @property
    def read_buffer(self) -> bytes:
        return self._TcpConnection__readBuffer

    @read_buffer.setter
    def read_buffer(self, value: bytes) -> None:
        self._TcpConnection__readBuffer = value

    @property
    def raw_socket(self) -> Any:
        """The connection's socket (None for an outgoing one before ``connect``)."""
        return self._TcpConnection__socket


def listening_socket(server: TcpServer) -> Any:
    """A ``TcpServer``'s bound socket."""
    return server._TcpServer__socket


def unpickle_frame(data: bytes) -> Any:
    """A frame's message, as pysyncobj's connections decode it (with the compression module
    ``install`` gave them)."""
    return _tcp_connection.pickle.loads(_tcp_connection.zlib.decompress(data))
