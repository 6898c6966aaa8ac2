"""Hostile peers on the gateway's listeners: one bad connection ends that connection only.

Raw sockets with hand-built WebSocket frames, so that a test can send what no well-behaved
client library would: control frames while the server closes, absurd lengths, pings around the
auth timeout. Each test then checks that the node still serves everyone else: the tests on
``fast_auth_node`` share one node for the module, so each also finds it serving after what the
tests before it did.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from client.errors import ClientClosed
from client.wkproto import open_client
from launcher.devcluster import NodeProcess
from proto.wkproto import Connack, Connect, FrameDecoder, ReasonCode, encode
from tests.conftest import Api, start_node

# A WKProto CONNECT header whose remaining-length varint declares far more than the gateway
# accepts: the session refuses it at once and closes.
ABSURD_CONNECT = bytes([0x10, 0xFF, 0xFF, 0xFF, 0x7F])


@pytest.fixture(scope="module")
def fast_auth_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("fastauth"), gateway__auth_timeout_s=0.5)
    yield proc
    proc.stop()


def ws_addr(node: NodeProcess) -> tuple[str, int]:
    host, port = node.endpoints["ws"].removeprefix("ws://").rsplit(":", 1)
    return host, int(port)


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """One client frame (RFC 6455 §5.2), masked as a client must unless told otherwise."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_open(node: NodeProcess) -> socket.socket:
    """A raw socket past the WebSocket upgrade."""
    sock = socket.create_connection(ws_addr(node), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    host, port = ws_addr(node)
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "closed during the upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def ping_until_closed(sock: socket.socket, timeout_s: float) -> bool:
    """Send PINGs back to back, reading whatever comes, until the server closes the socket.
    True when it closed within ``timeout_s``."""
    sock.settimeout(0.01)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            sock.sendall(ws_frame(0x9, b"are you there"))
        except OSError:
            return True
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            pass
        except OSError:
            return True
    return False


def assert_serves(node: NodeProcess) -> None:
    """The node is alive and a well-behaved WebSocket client still gets through."""
    assert node.running, "the node process exited"
    api = Api(node.endpoints["http"])
    api.token("calm", "calm-token")

    async def connect() -> None:
        host, port = ws_addr(node)
        async with open_client(host, port, uid="calm", token="calm-token", transport="ws") as c:
            assert (await c.send("calm", 1, b'{"type":1,"content":"still here"}')).ok

    trio.run(connect)
    assert node.running


def test_pings_while_the_server_closes_after_a_bad_frame_end_only_that_connection(
    fast_auth_node: NodeProcess,
) -> None:
    for _ in range(3):
        sock = ws_open(fast_auth_node)
        sock.sendall(ws_frame(0x2, ABSURD_CONNECT))
        assert ping_until_closed(sock, timeout_s=5), "the server never closed the connection"
        sock.close()
    assert_serves(fast_auth_node)


def test_pings_around_the_auth_timeout_end_only_that_connection(
    fast_auth_node: NodeProcess,
) -> None:
    # No WKProto frame at all: the session gives up at the auth timeout (0.5 s here) and closes
    # while pings keep arriving.
    for _ in range(3):
        sock = ws_open(fast_auth_node)
        assert ping_until_closed(sock, timeout_s=5), "the server never closed the connection"
        sock.close()
    assert_serves(fast_auth_node)


def tcp_addr(node: NodeProcess) -> tuple[str, int]:
    host, port = node.endpoints["tcp"].rsplit(":", 1)
    return host, int(port)


def closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_beyond_max_connections_are_closed_at_once(tmp_path: Path) -> None:
    node = start_node(tmp_path, gateway__max_connections=3, gateway__auth_timeout_s=30)
    try:
        held = [socket.create_connection(tcp_addr(node)) for _ in range(2)]
        held.append(ws_open(node))  # both transports count
        for _ in range(5):
            extra = socket.create_connection(tcp_addr(node))
            assert closed_by_server(extra, 5), "a connection over the cap was kept"
            extra.close()
        extra = socket.create_connection(ws_addr(node))
        assert closed_by_server(extra, 5)
        extra.close()
        # The connections within the cap are untouched, and a freed slot is usable again.
        assert not closed_by_server(held[0], 0.2)
        held.pop().close()

        async def connect() -> None:
            Api(node.endpoints["http"]).token("cap", "cap-token")
            async with open_client(*tcp_addr(node), uid="cap", token="cap-token") as c:
                assert (await c.send("cap", 1, b'{"type":1,"content":"in"}')).ok

        deadline = time.monotonic() + 5
        while True:  # the server notices the freed slot when it reads the close
            try:
                trio.run(connect)
                break
            except (ClientClosed, OSError):
                assert time.monotonic() < deadline, "the freed slot was never reused"
        log = node.log_path.read_text()
        # Six refusals, at most one line per transport per interval (rate-limited).
        assert 1 <= log.count("gateway.max_connections") <= 2
        for s in held:
            s.close()
    finally:
        node.stop()


@pytest.mark.parametrize("client_timestamp", [-(2**63), 2**63 - 1])
def test_a_connect_with_an_extreme_client_clock_is_still_answered(
    fast_auth_node: NodeProcess, client_timestamp: int
) -> None:
    # CONNACK carries now - client_timestamp as an i64; unclamped it did not fit, the CONNACK
    # could not be encoded and the client never heard back.
    connect = Connect(
        version=4,
        device_flag=0,
        device_id="d",
        uid="clock",
        token="wrong",
        client_timestamp=client_timestamp,
        client_key="",
    )
    with socket.create_connection(tcp_addr(fast_auth_node), timeout=5) as sock:
        sock.sendall(encode(connect, 4))
        decoder = FrameDecoder()
        decoder.version = 4
        ack = None
        while ack is None:
            data = sock.recv(4096)
            assert data, "closed without a CONNACK"
            decoder.feed(data)
            ack = decoder.next_frame()
    assert isinstance(ack, Connack)
    assert ack.reason_code != ReasonCode.SUCCESS
    assert_serves(fast_auth_node)


def read_ws_message(sock: socket.socket, timeout_s: float = 5) -> bytes | None:
    """The payload of the next (unmasked, unfragmented) server message; None once closed."""
    sock.settimeout(timeout_s)
    buf = b""
    while True:
        if len(buf) >= 2:
            n, at = buf[1] & 0x7F, 2
            if n == 126 and len(buf) >= 4:
                n, at = struct.unpack(">H", buf[2:4])[0], 4
            if n < 127 and len(buf) >= at + n:
                return buf[at : at + n]
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk


def test_an_empty_message_does_not_end_the_session(fast_auth_node: NodeProcess) -> None:
    sock = ws_open(fast_auth_node)
    sock.sendall(ws_frame(0x2, b""))  # legal, and no end of anything
    connect = Connect(
        version=6,
        device_flag=0,
        device_id="d",
        uid="empty",
        token="t",
        client_timestamp=0,
        client_key="",
    )
    sock.sendall(ws_frame(0x2, encode(connect, 6)))
    answer = read_ws_message(sock)
    assert answer is not None, "the server closed instead of reading the CONNECT"
    connack = FrameDecoder(6)
    connack.feed(answer)
    frame = connack.next_frame()
    # Encryption is on and the client key empty: refused, but only after reading it.
    assert isinstance(frame, Connack) and frame.reason_code == ReasonCode.CLIENT_KEY_IS_EMPTY
    sock.close()
    assert_serves(fast_auth_node)
