"""Raft frames (``cluster/raft/wire.py``, ``cluster/raft/guard.py``): what a node accepts before
unpickling, how large a frame may be, and how a connection that sends bad input ends."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest
from pysyncobj import pickle as raft_pickle
from pysyncobj.poller import PollPoller
from pysyncobj.syncobj import _COMMAND_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE

from cluster.raft import wire
from cluster.raft.conf import MAX_COMMAND_BYTES, MAX_ENTRY_BYTES
from cluster.raft.guard import (
    FRAME_LIMIT,
    HANDSHAKE_FRAME_LIMIT,
    ConnectionGuard,
    GuardedConnection,
)
from cluster.raft.wire import FrameAuthError, authenticator_for
from cluster.ratelog import RateLimitedLog


def test_a_sealed_frame_gives_back_its_data_and_timestamp() -> None:
    auth = authenticator_for("secret")
    token = auth.encrypt_at_time(b"pickled raft message", 1234)
    receiver = authenticator_for("secret")
    assert receiver.extract_timestamp(token) == 1234
    assert receiver.decrypt(token) == b"pickled raft message"
    assert len(token) == len(b"pickled raft message") + wire.OVERHEAD


def test_a_frame_on_the_wire_does_not_show_what_it_carries() -> None:
    # An AppendEntries as pysyncobj sends it, carrying a command with a marker in clear text.
    marker = b"MARKER-in-clear-text-0123456789"
    body = raft_pickle.dumps(
        (b"k" * 32, {"type": "append_entries", "entries": [(_entry(marker), 7, 1)]})
    )
    assert marker in body
    token = authenticator_for("secret").encrypt_at_time(body, 99)
    assert marker not in token
    assert b"append_entries" not in token
    # ... nor the same bytes twice: every frame has its own nonce
    again = authenticator_for("secret")
    first, second = again.encrypt_at_time(body, 99), again.encrypt_at_time(body, 99)
    assert first[wire.OVERHEAD - 16 :] != second[wire.OVERHEAD - 16 :]


def test_nonces_never_repeat_under_a_key_and_each_sender_has_its_own_key() -> None:
    a, b = authenticator_for("secret"), authenticator_for("secret")
    heads = [bytes(a.encrypt_at_time(b"x", 1)[:37]) for _ in range(1000)]
    key_ids = {h[9:25] for h in heads}
    nonces = [h[25:37] for h in heads]
    assert len(key_ids) == 1 and len(set(nonces)) == len(nonces)
    assert bytes(b.encrypt_at_time(b"x", 1)[9:25]) not in key_ids


def _hmac_frame(data: bytes, stamp: int, password: str = "secret") -> bytes:
    """A frame of version 1, as raftchat sent them before encryption: signed, in clear."""
    key = hashlib.pbkdf2_hmac("sha256", password.encode(), b"raftchat raft frames v1", 100_000)
    signed = struct.pack(">BQ", 1, stamp) + data
    return signed + hmac.digest(key, signed, "sha256")


def test_the_old_hmac_framing_is_refused_naming_its_version() -> None:
    old = _hmac_frame(b"pickled raft message", 1234)
    receiver = authenticator_for("secret")
    with pytest.raises(FrameAuthError, match="version 1"):
        receiver.extract_timestamp(old)
    with pytest.raises(FrameAuthError, match="version 1"):
        receiver.decrypt(old)


def _flip(at: int) -> Callable[[bytes], bytes]:
    return lambda t: t[:at] + bytes([t[at] ^ 1]) + t[at + 1 :]


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: authenticator_for("other").encrypt_at_time(b"pickled raft message", 1234),
        _flip(-1),  # tag altered
        _flip(40),  # ciphertext altered
        _flip(30),  # nonce altered
        _flip(12),  # key id altered
        lambda t: t[:1] + (4321).to_bytes(8, "big") + t[9:],  # timestamp altered
        lambda t: bytes([3]) + t[1:],  # unknown version
        lambda t: t[:52],  # too short for a tag
        lambda t: b"",
    ],
    ids=[
        "other password",
        "tag",
        "ciphertext",
        "nonce",
        "key id",
        "timestamp",
        "version",
        "short",
        "empty",
    ],
)
def test_frames_not_sealed_with_the_cluster_password_are_refused(
    forge: Callable[[bytes], bytes],
) -> None:
    token = authenticator_for("secret").encrypt_at_time(b"pickled raft message", 1234)
    forged = forge(token)
    receiver = authenticator_for("secret")
    with pytest.raises(FrameAuthError):
        receiver.extract_timestamp(forged)
    with pytest.raises(FrameAuthError):
        receiver.decrypt(forged)
    # the receiver still opens the genuine frame afterwards
    assert receiver.decrypt(token) == b"pickled raft message"


def test_while_the_password_changes_frames_under_either_one_open() -> None:
    """``(password, accepted)``: sealed under the first only, opened under both."""
    changing = authenticator_for(("new-password", "old-password"))
    for sender in (authenticator_for("old-password"), authenticator_for("new-password")):
        frame = bytes(sender.encrypt_at_time(b"payload", 7))
        assert changing.decrypt(frame) == b"payload"
        assert changing.decrypt(bytes(frame)) == b"payload"  # the key is kept: opens again
    sealed = bytes(changing.encrypt_at_time(b"payload", 8))
    assert authenticator_for("new-password").decrypt(sealed) == b"payload"
    with pytest.raises(FrameAuthError):
        authenticator_for("old-password").decrypt(sealed)
    with pytest.raises(FrameAuthError):
        changing.decrypt(bytes(authenticator_for("a-third-password").encrypt_at_time(b"x", 9)))


def test_a_receiver_keeps_only_the_keys_of_frames_that_opened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "MAX_KEYS", 4)
    receiver = authenticator_for("secret")
    for _ in range(10):  # junk under made-up key ids
        junk = authenticator_for("other").encrypt_at_time(b"x", 1)
        with pytest.raises(FrameAuthError):
            receiver.decrypt(junk)
    assert receiver._openers == {}
    senders = [authenticator_for("secret") for _ in range(6)]
    for s in senders:
        assert receiver.decrypt(s.encrypt_at_time(b"y", 1)) == b"y"
    assert len(receiver._openers) == 4
    # the oldest was dropped and is derived again when its sender speaks
    assert receiver.decrypt(senders[0].encrypt_at_time(b"z", 2)) == b"z"


# --- frame limits -------------------------------------------------------------------------------


def _entry(command: bytes) -> bytes:
    """A log entry as pysyncobj 0.3.17 makes one of ``ReplicatedGroup.apply(command)``: the
    command type byte and the protocol-2 pickle of (method id, args)."""
    return bytes([_COMMAND_TYPE.REGULAR]) + raft_pickle.dumps((7, (command,)))


def _signed(message: object, key: bytes | None = None, password: str = "secret") -> bytes:
    """A frame as pysyncobj sends it: length prefix, then the signed pickle of the message,
    wrapped with the receiver's connection key once it has one."""
    body = raft_pickle.dumps(message if key is None else (key, message))
    data = authenticator_for(password).encrypt_at_time(body, int(time.monotonic()))
    return struct.pack("i", len(data)) + data


def test_the_largest_legitimate_frames_fit_under_the_limits() -> None:
    # An AppendEntries catching a follower up: entries until their sizes reach MAX_ENTRY_BYTES,
    # the one that crosses it included, here the worst kinds: the smallest entries (each a
    # distinct object, as read from the journal, so the pickle cannot share them) and then
    # the largest command, of bytes that protocol 2 pickles at twice their size.
    big = 2**40  # indexes and terms far beyond any real cluster's, so pickled at full width
    entries, total = [], 0
    while total < MAX_ENTRY_BYTES:
        entry = _entry(b"")
        entries.append((entry, big + len(entries), big))
        total += len(entry)
    entries.append((_entry(b"\xff" * MAX_COMMAND_BYTES), big + len(entries), big))
    message = {
        "type": "append_entries",
        "term": big,
        "commit_index": big,
        "entries": entries,
        "prevLogIdx": big,
        "prevLogTerm": big,
    }
    frame = _signed(message, key=b"\xff" * 32)
    assert len(frame) - 4 <= FRAME_LIMIT
    # ... and the limit is not far above it (it is there to stop absurd lengths early)
    assert len(frame) > 0.75 * FRAME_LIMIT
    # The handshake: the peer's key, the answer with ours, then the peer's address; keys of
    # bytes >= 0x80 pickle at twice their size, and a host name may have 253 characters.
    key = b"\xff" * 32
    address = "h" * 253 + ":65535"
    for message, wrap in [(key, None), (key, key), (address, key), ("readonly", key)]:
        assert len(_signed(message, wrap)) - 4 <= HANDSHAKE_FRAME_LIMIT


# --- the guard: places and deadlines (injected clock) -------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def logged() -> Iterator[list[str]]:
    logger = logging.getLogger("test.raft.guard")
    handler = Collect()
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def make_guard(clock: Clock, per_source: int = 2, deadline_s: float = 2.0) -> ConnectionGuard:
    log = RateLimitedLog(logging.getLogger("test.raft.guard"), 10.0, clock=clock)
    return ConnectionGuard(per_source=per_source, deadline_s=deadline_s, clock=clock, log=log)


class FakeConn:
    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.refused: str | None = None

    def refuse(self, reason: str) -> None:
        self.refused = reason
        self.guard.settle(self)


def test_the_guard_keeps_a_few_places_per_port_and_source(clock: Clock) -> None:
    guard = make_guard(clock, per_source=2)
    a1, a2, a3 = (FakeConn(guard) for _ in range(3))
    assert guard.admit(a1, (12001, "10.0.0.9"))
    assert guard.admit(a2, (12001, "10.0.0.9"))
    assert not guard.admit(a3, (12001, "10.0.0.9"))  # its source has no place left
    assert guard.admit(FakeConn(guard), (12001, "10.0.0.8"))  # another source
    assert guard.admit(FakeConn(guard), (12002, "10.0.0.9"))  # another port
    guard.settle(a1)  # authenticated (or closed): its place is free again
    guard.settle(a1)  # twice is harmless
    assert guard.waiting((12001, "10.0.0.9")) == 1
    assert guard.admit(a3, (12001, "10.0.0.9"))
    assert guard.waiting() == 4


def test_the_guard_closes_connections_that_miss_their_deadline(clock: Clock) -> None:
    guard = make_guard(clock, per_source=2, deadline_s=2.0)
    early, settled = FakeConn(guard), FakeConn(guard)
    assert guard.admit(early, (12001, "10.0.0.9"))
    assert guard.admit(settled, (12001, "10.0.0.9"))
    guard.settle(settled)
    clock.now += 1.0
    late = FakeConn(guard)
    assert guard.admit(late, (12001, "10.0.0.9"))
    clock.now += 0.9
    guard.sweep()
    assert early.refused is None
    clock.now += 0.2  # early's deadline has passed, late's not
    guard.sweep()
    assert early.refused == "not authenticated within 2 s"
    assert late.refused is None and settled.refused is None
    # a new connection takes the place of an expired one even before the driver's sweep
    clock.now += 1.0
    newer = FakeConn(guard)
    assert guard.admit(newer, (12001, "10.0.0.9"))
    assert guard.admit(FakeConn(guard), (12001, "10.0.0.9"))
    assert late.refused == "not authenticated within 2 s"


# --- guarded connections over loopback ----------------------------------------------------------


class GuardedPoller(PollPoller):  # type: ignore[misc]
    """A poller that carries a guard, as the driver's per-group pollers do."""

    def __init__(self, guard: ConnectionGuard) -> None:
        super().__init__()
        self.raft_guard = guard


class Port:
    """A listening socket whose accepted connections become ``GuardedConnection``s, as
    pysyncobj's TcpServer makes them, driven by polling on this thread."""

    def __init__(self, guard: ConnectionGuard, password: str | None = "secret") -> None:
        wire.install()
        self.guard = guard
        self.poller = GuardedPoller(guard)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.password = password
        self.conns: list[GuardedConnection] = []
        self.messages: list[object] = []

    def connect(self, source: str = "127.0.0.1") -> tuple[socket.socket, GuardedConnection]:
        client = socket.create_connection(self.address, timeout=5, source_address=(source, 0))
        sock, _ = self.listener.accept()
        sock.setblocking(False)
        conn = GuardedConnection(poller=self.poller, socket=sock, timeout=10.0)
        if self.password is not None:
            conn.encryptor = authenticator_for(self.password)
        conn.setOnMessageReceivedCallback(self.messages.append)
        self.conns.append(conn)
        return client, conn

    def pump(self, until: Callable[[], bool], timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not until():
            assert time.monotonic() < deadline, "condition not reached"
            self.poller.poll(0.01)

    def close(self) -> None:
        for conn in self.conns:
            conn.disconnect()
        self.listener.close()


@pytest.fixture
def port(clock: Clock) -> Iterator[Port]:
    p = Port(make_guard(clock, per_source=3))
    try:
        yield p
    finally:
        p.close()


def closed(conn: GuardedConnection) -> Callable[[], bool]:
    return lambda: conn.state == CONNECTION_STATE.DISCONNECTED


def hung_up(client: socket.socket) -> bool:
    """The node closed its end (the client reads EOF or a reset)."""
    client.settimeout(2)
    try:
        while client.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_a_huge_declared_length_ends_the_connection_at_once(port: Port, logged: list[str]) -> None:
    client, conn = port.connect()
    client.setblocking(False)
    client.send(struct.pack("i", 2**31 - 1) + os.urandom(60_000))
    port.pump(closed(conn))
    assert hung_up(client)
    assert logged == [
        f"Raft port {port.address[1]}: dropped the connection from 127.0.0.1: a frame declares "
        "2147483647 bytes, at most 1024 are taken before authenticating"
    ]
    assert port.guard.waiting() == 0  # its place is free again
    client.close()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (_signed("x", password="wrong"), "frame failed authentication (bad frame tag)"),
        (struct.pack("i", 60) + b"\x02" + bytes(59), "frame failed authentication (bad frame tag)"),
        (
            struct.pack("i", 45) + _hmac_frame(b"\x80\x02N.", 1),
            "frame failed authentication (a frame of version 1",
        ),
        (struct.pack("i", 20) + bytes(20), "frame failed authentication (not a raftchat"),
        (struct.pack("i", -5) + b"junk", "a frame declares -5 bytes"),
    ],
    ids=["wrong password", "junk", "old framing", "too short", "negative length"],
)
def test_a_frame_that_fails_its_checks_ends_the_connection_with_a_line(
    port: Port, logged: list[str], frame: bytes, reason: str
) -> None:
    client, conn = port.connect()
    client.sendall(frame)
    port.pump(closed(conn))
    assert hung_up(client)
    assert len(logged) == 1 and reason in logged[0], logged
    assert port.messages == []
    client.close()


def test_a_connection_authenticates_with_the_first_frame_bound_to_it(
    port: Port, logged: list[str]
) -> None:
    client, conn = port.connect()
    peer_key = os.urandom(32)
    client.sendall(_signed(peer_key))  # pysyncobj's first frame: the peer's key
    port.pump(lambda: len(port.messages) == 1)
    # signed, but a copy of it would pass as well: not yet authenticated
    assert not conn.authenticated and port.guard.waiting() == 1
    conn.sendRandKey, conn.recvRandKey = peer_key, os.urandom(32)  # as pysyncobj's transport
    # still the handshake's limit: a frame above it is refused however well signed
    client.sendall(_signed(b"x" * 2000, key=conn.recvRandKey)[:100])
    port.pump(closed(conn))
    assert "declares" in logged[-1] and "before authenticating" in logged[-1]
    client.close()

    client, conn = port.connect("127.0.0.3")  # another source: its own log line
    client.sendall(_signed(peer_key))
    port.pump(lambda: len(port.messages) == 2)
    conn.sendRandKey, conn.recvRandKey = peer_key, os.urandom(32)
    client.sendall(_signed("10.0.0.1:12001", key=conn.recvRandKey))
    port.pump(lambda: len(port.messages) == 3)
    assert port.messages[-1] == "10.0.0.1:12001"
    assert conn.authenticated and port.guard.waiting() == 0
    # now frames up to FRAME_LIMIT are taken ...
    big = os.urandom(200_000)
    client.sendall(_signed(big, key=conn.recvRandKey))
    port.pump(lambda: len(port.messages) == 4)
    assert port.messages[-1] == big
    # ... and none above it
    client.sendall(struct.pack("i", FRAME_LIMIT + 1) + b"x" * 1000)
    port.pump(closed(conn))
    assert logged[-1].endswith(f"declares {FRAME_LIMIT + 1} bytes, at most {FRAME_LIMIT} are taken")
    client.close()


def test_frames_copied_from_another_connection_do_not_authenticate(
    port: Port, logged: list[str]
) -> None:
    client, conn = port.connect()
    peer_key = os.urandom(32)
    client.sendall(_signed(peer_key))
    port.pump(lambda: len(port.messages) == 1)
    conn.sendRandKey, conn.recvRandKey = peer_key, os.urandom(32)
    client.sendall(_signed("10.0.0.1:12001", key=os.urandom(32)))  # another connection's key
    port.pump(closed(conn))
    assert "frame with another connection's key" in logged[-1]
    assert not conn.authenticated
    client.close()


def test_a_members_message_sent_before_the_key_exchange_ended_is_no_warning(
    port: Port, caplog: pytest.LogCaptureFixture
) -> None:
    """pysyncobj sends a vote request on a new link before the peer's key has come back; the
    receiver drops it with the connection, as pysyncobj did, and says so at INFO."""
    client, conn = port.connect()
    peer_key = os.urandom(32)
    client.sendall(_signed(peer_key))
    port.pump(lambda: len(port.messages) == 1)
    conn.sendRandKey, conn.recvRandKey = peer_key, os.urandom(32)
    with caplog.at_level(logging.INFO, logger="test.raft.guard"):
        client.sendall(_signed({"type": "timeout_now", "term": 3}))  # signed, but unwrapped
        port.pump(closed(conn))
    [record] = [r for r in caplog.records if r.name == "test.raft.guard"]
    assert record.levelno == logging.INFO
    assert "signed frame without this connection's key" in record.getMessage()
    client.close()


def test_a_silent_connection_is_closed_at_its_deadline(
    port: Port, clock: Clock, logged: list[str]
) -> None:
    client, conn = port.connect()
    port.poller.poll(0.05)
    port.guard.sweep()
    assert conn.state == CONNECTION_STATE.CONNECTED
    clock.now += 2.0  # the guard's deadline (what the driver's sweep does once per pass)
    port.guard.sweep()
    assert conn.state == CONNECTION_STATE.DISCONNECTED
    assert hung_up(client)
    assert logged[-1].endswith("not authenticated within 2 s")
    client.close()


def test_a_source_with_its_places_taken_gets_new_connections_closed(
    port: Port, logged: list[str]
) -> None:
    held = [port.connect("127.0.0.7") for _ in range(3)]
    extra_client, extra = port.connect("127.0.0.7")
    other_client, other = port.connect("127.0.0.8")
    port.pump(closed(extra))
    assert hung_up(extra_client)
    assert logged == [
        f"Raft port {port.address[1]}: dropped the connection from 127.0.0.7: more than 3 "
        "connections from this address waiting to authenticate"
    ]
    assert all(c.state == CONNECTION_STATE.CONNECTED for _, c in held)
    assert other.state == CONNECTION_STATE.CONNECTED
    # once one of them has gone, the source has a place again
    held[0][0].close()
    port.pump(closed(held[0][1]))
    again_client, again = port.connect("127.0.0.7")
    port.poller.poll(0.05)
    assert again.state == CONNECTION_STATE.CONNECTED
    for client in [*(c for c, _ in held), extra_client, other_client, again_client]:
        client.close()


def test_many_junk_connections_make_one_line(port: Port, logged: list[str]) -> None:
    for _ in range(40):
        client, conn = port.connect("127.0.0.9")
        client.sendall(struct.pack("i", 100) + os.urandom(100))
        port.pump(closed(conn))
        client.close()
    assert len(logged) == 1 and "127.0.0.9" in logged[0]
