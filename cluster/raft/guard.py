"""What a Raft port reads from a connection before it has authenticated, and how it refuses.

pysyncobj 0.3.17 reads a frame's 4-byte length, buffers until that many bytes have arrived,
whatever the length says, and only then checks the frame (``wire.py``: its tag). Left to it, one
stranger declaring 2 GiB and streaming junk keeps the driver thread, which runs every group of
the node, busy reading and copying its buffer: sends take seconds and groups change leaders. It
closes a connection over a bad frame without a word, and leaves one that sends nothing, or a
byte now and then, open for good (it checks a timeout only when its socket has an event).

Every pysyncobj TCP connection is a ``GuardedConnection`` (``wire.install``):

* A frame may declare at most ``HANDSHAKE_FRAME_LIMIT`` bytes until the connection has
  authenticated and ``FRAME_LIMIT`` after; the length is checked as soon as its 4 bytes are in.
* Until it has authenticated, a connection reads no further than its first whole frame, so
  each frame is checked before more is read.
* A frame that fails a check ends its connection, and only it, with a line in the log,
  rate-limited per source address (``REFUSALS``).
* A Raft port's accept queue is ``LISTEN_BACKLOG`` long (pysyncobj's 5 let a burst of
  connections hold the peers' out).
* A ``ConnectionGuard`` (one per driver, so per node) counts the incoming connections that have
  not authenticated, per Raft port and source address: beyond ``UNAUTHENTICATED_PER_SOURCE`` a
  new one is closed at once, and one that has not authenticated ``AUTH_DEADLINE_S`` after it was
  accepted is closed.

A connection has authenticated once a frame has passed the tag *and* carried the connection's
own random key (pysyncobj's per-connection key exchange). The first frame of an incoming
connection, the peer's key, passes the tag but could be copied from another connection by
anyone who can capture cluster traffic; the second cannot. Refusing costs one length check or one
tag check (~3 us for a handshake frame, ~8 us with the key of a sender not heard from
before) and never blocks: all of it runs on the driver thread.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.tcp_server import TcpServer

from cluster.ratelog import RateLimitedLog

from . import pysyncobj_seam as seam

HANDSHAKE_FRAME_LIMIT = 1024
"""Frames before authentication: the peer's random key, then its address (or a pysyncobj
utility command), each a few hundred bytes at most: 421 with a 253-character host name and
keys of bytes that pickle at twice their size (``tests/unit/test_cluster_wire.py``)."""

FRAME_LIMIT = 32 * 1024 * 1024
"""Frames after authentication. The largest legitimate one is an AppendEntries to a follower
that catches up: pysyncobj adds entries until their sizes reach ``MAX_ENTRY_BYTES`` (4 MiB),
the one that crosses it included, and pickles them with protocol 2, which writes a byte of 0x80
or more as two. An entry of a ``MAX_COMMAND_BYTES`` command of such bytes is 8.3 MiB, 4 MiB of
the smallest entries pickle to 9.5 MiB, so such a frame is at most ~25.3 MiB (built in
``tests/unit/test_cluster_wire.py``); a chunk of a larger entry or of a snapshot is smaller. A
frame above the limit would make the follower drop the link and the leader resend it forever,
so the limit is above that worst case. It stops a 2 GiB length from a member gone wrong; a
stranger's frames stop at ``HANDSHAKE_FRAME_LIMIT``."""

UNAUTHENTICATED_PER_SOURCE = 8
"""Incoming connections per Raft port and source address that may be waiting to authenticate.
A peer has one link per group to a node and authenticates it within a round trip; even while it
reconnects (pysyncobj drops idle links, ADR 010) it rarely has two waiting. Several peers can
share an address, though: behind a NAT, or a cluster on one host's loopback, where every node
connects from 127.0.0.1. Each waiting connection costs a socket and at most ~64 KiB read."""

AUTH_DEADLINE_S = 2.0
"""How long an incoming connection may take to authenticate: a handshake takes a round trip and
a couple of driver passes (milliseconds), and pysyncobj itself gives up on a link that has
been silent for ``RaftTiming.connection_timeout_s`` (1 s)."""

LISTEN_BACKLOG = 128
"""Connections the kernel queues for a Raft port until the driver accepts them (one per port per
pass): enough for the connections of many peers and strangers' bursts at once."""

LOG_INTERVAL_S = 10.0

REFUSALS = RateLimitedLog(logging.getLogger("raftchat.raft.guard"), LOG_INTERVAL_S)
"""Refused connections and frames: one line per source address per ``LOG_INTERVAL_S``."""

_LENGTH = struct.Struct("i")  # pysyncobj's length prefix: native byte order, signed


class _Refusable(Protocol):
    def refuse(self, reason: str) -> None: ...


class ConnectionGuard:
    """The incoming connections of one driver that have not authenticated yet, counted per
    (port, source address), with their deadlines. Driver thread only."""

    def __init__(
        self,
        *,
        per_source: int = UNAUTHENTICATED_PER_SOURCE,
        deadline_s: float = AUTH_DEADLINE_S,
        clock: Callable[[], float] = time.monotonic,
        log: RateLimitedLog = REFUSALS,
    ) -> None:
        self.per_source = per_source
        self.deadline_s = deadline_s
        self.log = log
        self._clock = clock
        # Connection -> (source key, deadline). Every deadline is admission time + deadline_s,
        # so insertion order is deadline order and the expired ones are at the front.
        self._waiting: dict[_Refusable, tuple[Hashable, float]] = {}
        self._counts: dict[Hashable, int] = {}

    def admit(self, conn: _Refusable, source: Hashable) -> bool:
        """A new incoming connection: False if ``source`` already has its share waiting."""
        self.sweep()  # expired connections give their places back first
        count = self._counts.get(source, 0)
        if count >= self.per_source:
            return False
        self._counts[source] = count + 1
        self._waiting[conn] = (source, self._clock() + self.deadline_s)
        return True

    def settle(self, conn: _Refusable) -> None:
        """``conn`` authenticated or closed: it no longer counts."""
        entry = self._waiting.pop(conn, None)
        if entry is None:
            return
        source = entry[0]
        left = self._counts[source] - 1
        if left:
            self._counts[source] = left
        else:
            del self._counts[source]

    def sweep(self) -> None:
        """Close the connections past their deadline (and write held-back log counts)."""
        now = self._clock()
        while self._waiting:
            conn, (_source, deadline) = next(iter(self._waiting.items()))
            if deadline > now:
                break
            self.settle(conn)
            conn.refuse(f"not authenticated within {self.deadline_s:g} s")
        self.log.flush()

    def waiting(self, source: Hashable | None = None) -> int:
        if source is None:
            return len(self._waiting)
        return self._counts.get(source, 0)


class FrameRefused(Exception):
    """Why a frame ends its connection (the text goes to the log, at ``level``)."""

    def __init__(self, reason: str, level: int = logging.WARNING) -> None:
        super().__init__(reason)
        self.level = level


class GuardedConnection(seam.ConnectionHooks):
    """pysyncobj's TcpConnection with the checks above. Overrides its private steps (through
    ``ConnectionHooks``: socket events, reads, parsing) and ``connect``/``disconnect``."""

    # pysyncobj's, set in TcpConnection.__init__ (declared for mypy, which cannot see it)
    recvLastTimestamp: int

    def __init__(self, poller: Any, *args: Any, **kwargs: Any) -> None:
        # Set before TcpConnection.__init__, which subscribes the socket to the poller.
        self._guard: ConnectionGuard | None = getattr(poller, "raft_guard", None)
        self._authenticated = False
        self._refusal: str | None = None
        self._gone = False
        self._where = "Raft link"
        self._source = "?"
        super().__init__(poller, *args, **kwargs)
        sock = self.raw_socket
        if sock is None:
            return  # outgoing: connect() says where to
        try:
            self._source = str(sock.getpeername()[0])
            port = int(sock.getsockname()[1])
        except OSError:  # the peer has already gone: nothing to say about it
            self._gone = True
            return
        self._where = f"Raft port {port}"
        if self._guard is not None and not self._guard.admit(self, (port, self._source)):
            # Closed on its first event (next poll), not here: pysyncobj registers the connection
            # right after building it, and would keep a connection closed before that forever.
            self._refusal = (
                f"more than {self._guard.per_source} connections from this address "
                "waiting to authenticate"
            )

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    def refuse(self, reason: str, level: int = logging.WARNING) -> None:
        """End this connection because of bad input, with a (rate-limited) log line."""
        if self.state == CONNECTION_STATE.DISCONNECTED:
            return
        log = REFUSALS if self._guard is None else self._guard.log
        log.log(
            level,
            self._source,
            f"{self._where}: dropped the connection from {self._source}: {reason}",
            peer=self._source,
        )
        self.disconnect()

    # --- pysyncobj's methods ----------------------------------------------------------------

    def connect(self, host: str, port: int) -> bool:
        self._authenticated = False
        self._where, self._source = f"Raft link to {host}:{port}", str(host)
        return bool(super().connect(host, port))

    def disconnect(self) -> None:
        if self._guard is not None:
            self._guard.settle(self)
        super().disconnect()

    def on_socket_event(self, descr: int, event: int) -> None:
        if self._refusal is not None:
            self.refuse(self._refusal)
            return
        if self._gone:
            self.disconnect()
            return
        super().on_socket_event(descr, event)

    def read_once(self) -> bool:
        """One ``recv``; True to read again (pysyncobj reads until the socket is drained)."""
        if not super().read_once():
            return False
        buf = self.read_buffer
        if len(buf) < _LENGTH.size:
            return True
        (size,) = _LENGTH.unpack_from(buf)
        if not self._size_ok(size):
            return False
        # Before authenticating, a connection's first whole frame is checked before more is read.
        return self._authenticated or len(buf) < _LENGTH.size + size

    def parse_message(self) -> Any:
        """The next whole frame's message, or None (wait for more, or the connection ended).
        pysyncobj's own checks, each failure with its reason."""
        buf = self.read_buffer
        if len(buf) < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack_from(buf)
        if not self._size_ok(size):
            return None
        end = _LENGTH.size + size
        if len(buf) < end:
            return None
        try:
            message = self._open(buf[_LENGTH.size : end])
        except FrameRefused as e:
            self.refuse(str(e), e.level)
            return None
        self.read_buffer = buf[end:]
        return message

    # --- the checks -------------------------------------------------------------------------

    def _size_ok(self, size: int) -> bool:
        limit = FRAME_LIMIT if self._authenticated else HANDSHAKE_FRAME_LIMIT
        if 0 <= size <= limit:
            return True
        when = "" if self._authenticated else " before authenticating"
        self.refuse(f"a frame declares {size} bytes, at most {limit} are taken{when}")
        return False

    def _open(self, data: bytes) -> Any:
        keyed = self.recvRandKey is not None
        if self.encryptor is not None:
            try:
                stamp = self.encryptor.extract_timestamp(data)
                data = self.encryptor.decrypt(data)
            except Exception as e:
                raise FrameRefused(f"frame failed authentication ({e})") from None
            if stamp < self.recvLastTimestamp:
                raise FrameRefused("frame older than the one before it")
            self.recvLastTimestamp = stamp
        try:
            message = seam.unpickle_frame(data)
        except Exception:
            raise FrameRefused("frame does not unpickle") from None
        if keyed:
            # pysyncobj wraps as (key, message), and no unwrapped message is a pair
            if isinstance(message, tuple) and len(message) == 2:
                key, message = message
            else:
                # Signed, so from a member (or copied from one): pysyncobj sends vote requests
                # on a new link before the peer's key has come back, and the receiver drops
                # such a message with its connection, as pysyncobj does. It happens around
                # elections (a cluster's start, say) and is no stranger's doing: not a warning.
                raise FrameRefused(
                    "signed frame without this connection's key (sent before the key exchange "
                    "ended, or copied)",
                    logging.INFO,
                )
            if key != self.recvRandKey:
                raise FrameRefused("frame with another connection's key")
        if not self._authenticated and (keyed or self.encryptor is None):
            self._authenticated = True
            if self._guard is not None:
                self._guard.settle(self)
        return message


class GuardedServer(TcpServer):  # type: ignore[misc]
    """pysyncobj's TcpServer with a longer accept queue."""

    def bind(self) -> None:
        super().bind()
        # pysyncobj listens with a backlog of 5, and the kernel drops the SYNs that find the
        # queue full: a stranger's burst of connections would delay the peers' (by 1 s, then
        # 3 s, ... of SYN retries) before the guard could refuse any of them. Listening again
        # sets the queue's length.
        seam.listening_socket(self).listen(LISTEN_BACKLOG)
