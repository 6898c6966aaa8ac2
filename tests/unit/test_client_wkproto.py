"""The WKProto client against a fake server built from the same codec and crypto.

The fake peer is scripted per test: it reads what the client writes, checks it the way a server
would (msgKey, decryption, one frame per WebSocket message) and answers. Tests over real sockets
(TCP and WebSocket on 127.0.0.1, port 0) cover the transports; timing tests run over an
in-memory stream pair with trio's autojump clock so that no test waits on wall time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import pytest
import trio
import trio.testing
import trio_websocket

from client import ClientClosed, ClientError, ConnectRefused, SendResult
from client.errors import ClosedBeforeConnack
from client.wkproto import WKClient, open_client, open_client_over
from proto.wkproto import (
    LATEST_VERSION,
    ChannelType,
    Connack,
    Connect,
    Disconnect,
    Event,
    Frame,
    FrameDecoder,
    HeaderFlag,
    Ping,
    Pong,
    ReasonCode,
    Recv,
    Recvack,
    Send,
    Sendack,
    Setting,
    UnknownFrameType,
    decode,
    encode,
)
from proto.wkproto.crypto import KeyPair, SessionCipher, new_salt, recv_sign, send_sign

Transport = Literal["tcp", "ws"]
PeerSide = Callable[["Peer"], Awaitable[None]]
ClientSide = Callable[[WKClient], Awaitable[None]]

VERSIONS = [2, 4, 5, 6]
TEST_DEADLINE_S = 20.0


# --- the fake peer ------------------------------------------------------------------------


class Peer:
    """The server end of one connection."""

    def __init__(
        self,
        send_raw: Callable[[bytes], Awaitable[None]],
        recv_raw: Callable[[], Awaitable[bytes]],
        close: Callable[[], Awaitable[None]],
        *,
        ws: bool,
        path: str = "",
    ) -> None:
        self._send_raw = send_raw
        self._recv_raw = recv_raw
        self._close = close
        self.ws = ws
        self.path = path
        self.version = LATEST_VERSION
        self.decoder = FrameDecoder(LATEST_VERSION)
        self.cipher: SessionCipher | None = None
        self.released = trio.Event()
        self.raw_messages: list[bytes] = []

    @classmethod
    def over_stream(cls, stream: trio.abc.Stream) -> Peer:
        async def recv_raw() -> bytes:
            try:
                return bytes(await stream.receive_some(65536))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""

        return cls(stream.send_all, recv_raw, stream.aclose, ws=False)

    @classmethod
    def over_ws(cls, conn: trio_websocket.WebSocketConnection, path: str) -> Peer:
        async def recv_raw() -> bytes:
            try:
                message = await conn.get_message()
            except trio_websocket.ConnectionClosed:
                return b""
            assert isinstance(message, bytes), "WKProto travels in binary messages"
            return message

        return cls(conn.send_message, recv_raw, conn.aclose, ws=True, path=path)

    async def read_raw(self) -> bytes:
        data = await self._recv_raw()
        self.raw_messages.append(data)
        return data

    async def read_frame(self) -> Frame | None:
        """The next frame, ``None`` at end of stream. Over WebSocket each message must hold
        exactly one frame, which ``decode`` enforces."""
        if self.ws:
            data = await self.read_raw()
            return decode(data, self.version) if data else None
        while (frame := self.decoder.next_frame()) is None:
            data = await self.read_raw()
            if not data:
                return None
            self.decoder.feed(data)
        return frame

    async def expect(self, frame_type: type[Any]) -> Any:
        frame = await self.read_frame()
        assert isinstance(frame, frame_type), f"expected {frame_type.__name__}, got {frame!r}"
        return frame

    async def write(self, *frames: Frame) -> None:
        for frame in frames:
            await self._send_raw(encode(frame, self.version))

    async def write_raw(self, data: bytes) -> None:
        await self._send_raw(data)

    async def close(self) -> None:
        await self._close()

    async def accept_login(
        self,
        *,
        reason_code: int = ReasonCode.SUCCESS,
        server_version: int | None = None,
        give_key: bool = True,
        node_id: int = 7,
        extra: bytes = b"",
    ) -> Connect:
        """Read CONNECT and answer CONNACK the way the server negotiates: version
        min(client, 6) unless told otherwise, a fresh X25519 pair and salt when the client sent
        a key. ``extra`` is written in the same write as the CONNACK."""
        connect = await self.expect(Connect)
        self.version = server_version or min(connect.version, LATEST_VERSION)
        self.decoder.version = self.version
        server_key, salt = "", ""
        if connect.client_key and give_key:
            keys = KeyPair()
            salt = new_salt()
            self.cipher = SessionCipher(keys.aes_key(connect.client_key), salt.encode())
            server_key = keys.public_b64
        connack = Connack(
            time_diff=int(time.time() * 1000) - connect.client_timestamp,
            reason_code=reason_code,
            server_key=server_key,
            salt=salt,
            node_id=node_id,
            server_version=self.version,
        )
        await self.write_raw(encode(connack, self.version) + extra)
        return connect

    def open_send(self, send: Send) -> bytes:
        """Check a SEND's msgKey and return its plain payload, as the server does."""
        if self.cipher is None or send.setting & Setting.NO_ENCRYPT:
            assert send.msg_key == ""
            return send.payload
        sign = send_sign(
            send.client_seq, send.client_msg_no, send.channel_id, send.channel_type, send.payload
        )
        assert send.msg_key == self.cipher.msg_key(sign), "msgKey does not verify"
        return self.cipher.decrypt(send.payload)

    def make_recv(
        self,
        payload: bytes,
        *,
        message_id: int,
        message_seq: int,
        from_uid: str = "bob",
        channel_id: str = "bob",
        channel_type: int = ChannelType.PERSON,
        client_msg_no: str = "cmn-recv",
        setting: int = 0,
        flags: int = HeaderFlag.RED_DOT,
        expire: int = 0,
        topic: str = "",
        bad_msg_key: bool = False,
    ) -> Recv:
        """A RECV encrypted for this connection (unless NoEncrypt), as the server pushes it."""
        timestamp = int(time.time())
        wire, msg_key = payload, ""
        if self.cipher is not None and not setting & Setting.NO_ENCRYPT:
            wire = self.cipher.encrypt(payload)
            sign = recv_sign(
                message_id,
                message_seq,
                client_msg_no,
                timestamp,
                from_uid,
                channel_id,
                channel_type,
                wire,
            )
            msg_key = self.cipher.msg_key(sign)
            if bad_msg_key:
                msg_key = msg_key[::-1]
        return Recv(
            setting=setting,
            msg_key=msg_key,
            from_uid=from_uid,
            channel_id=channel_id,
            channel_type=channel_type,
            client_msg_no=client_msg_no,
            message_id=message_id,
            message_seq=message_seq,
            timestamp=timestamp,
            payload=wire,
            expire=expire,
            topic=topic,
            flags=flags,
        )


@dataclass
class FakeServer:
    port: int
    peers: trio.MemoryReceiveChannel[Peer]
    accepted: list[Peer] = field(default_factory=list)

    async def accept(self) -> Peer:
        peer = await self.peers.receive()
        self.accepted.append(peer)
        return peer


@asynccontextmanager
async def fake_server(transport: Transport) -> AsyncIterator[FakeServer]:
    send_peer, recv_peer = trio.open_memory_channel[Peer](16)
    async with trio.open_nursery() as nursery:
        if transport == "tcp":

            async def on_tcp(stream: trio.SocketStream) -> None:
                peer = Peer.over_stream(stream)
                await send_peer.send(peer)
                # Returning would close the socket under the test's feet.
                await peer.released.wait()

            listeners = await nursery.start(partial(trio.serve_tcp, on_tcp, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
        else:

            async def on_ws(request: trio_websocket.WebSocketRequest) -> None:
                conn = await request.accept()
                peer = Peer.over_ws(conn, request.path)
                await send_peer.send(peer)
                await peer.released.wait()

            server = await nursery.start(
                partial(trio_websocket.serve_websocket, on_ws, "127.0.0.1", 0, None)
            )
            port = server.port
        try:
            yield FakeServer(port, recv_peer)
        finally:
            nursery.cancel_scope.cancel()


def run(fn: Callable[[], Awaitable[None]], *, clock: trio.testing.MockClock | None = None) -> None:
    async def bounded() -> None:
        with trio.fail_after(TEST_DEADLINE_S):
            await fn()

    trio.run(bounded, clock=clock)


async def session(
    transport: Transport,
    peer_side: PeerSide,
    client_side: ClientSide,
    **client_kwargs: Any,
) -> FakeServer:
    """Run ``peer_side`` and ``client_side`` against each other over a real socket; the
    client stays connected until both sides are done, so neither side's last frame is lost."""
    client_kwargs.setdefault("uid", "alice")
    client_kwargs.setdefault("token", "secret")
    async with fake_server(transport) as server:
        peer_done = trio.Event()

        async def peer_task() -> None:
            await peer_side(await server.accept())
            peer_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer_task)
            async with open_client(
                "127.0.0.1", server.port, transport=transport, **client_kwargs
            ) as client:
                await client_side(client)
                await peer_done.wait()
    return server


async def in_memory(peer_side: PeerSide, client_side: ClientSide, **client_kwargs: Any) -> None:
    client_kwargs.setdefault("uid", "alice")
    client_kwargs.setdefault("token", "secret")
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = Peer.over_stream(server_stream)
    peer_done = trio.Event()

    async def peer_task() -> None:
        await peer_side(peer)
        peer_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer_task)
        async with open_client_over(client_stream, **client_kwargs) as client:
            await client_side(client)
            await peer_done.wait()


# --- the whole conversation, for every version, encryption and transport -------------------


@pytest.mark.parametrize("transport", ["tcp", "ws"])
@pytest.mark.parametrize("encrypt", [True, False], ids=["enc", "plain"])
@pytest.mark.parametrize("version", VERSIONS)
def test_full_session(version: int, encrypt: bool, transport: Transport) -> None:
    # Above 2^32 only where the wire has a u64 for it.
    seq = 2**32 + 5 if version >= 6 else 77
    message_id = 2**60 + 1
    second_setting = Setting.NO_ENCRYPT if encrypt else 0

    async def peer_side(peer: Peer) -> None:
        connect = await peer.accept_login()
        assert connect.uid == "alice"
        assert connect.token == "secret"
        assert connect.version == version
        assert connect.device_flag == 1
        assert connect.device_id == "dev-1"
        assert bool(connect.client_key) == encrypt
        assert abs(connect.client_timestamp - time.time() * 1000) < 60_000

        send = await peer.expect(Send)
        assert (send.client_seq, send.channel_id, send.channel_type) == (1, "bob", 1)
        assert send.flags == HeaderFlag.RED_DOT
        assert send.setting == 0
        assert peer.open_send(send) == b"hello"
        if encrypt:
            assert send.payload != b"hello"
        await peer.write(
            Sendack(
                message_id=message_id,
                client_seq=send.client_seq,
                message_seq=seq,
                reason_code=ReasonCode.SUCCESS,
                client_msg_no=send.client_msg_no,
                flags=send.flags,
            )
        )

        send = await peer.expect(Send)
        assert send.client_seq == 2
        assert send.client_msg_no == "cmn-2"
        assert send.flags == HeaderFlag.NO_PERSIST
        assert send.setting == second_setting | Setting.TOPIC
        assert send.topic == "news"
        assert send.expire == (60 if version >= 3 else 0)
        assert send.payload == b"\x00\xffraw"  # not encrypted: NoEncrypt or a plain session
        assert peer.open_send(send) == b"\x00\xffraw"
        await peer.write(
            Sendack(
                message_id=0,
                client_seq=send.client_seq,
                message_seq=0,
                reason_code=ReasonCode.NOT_ALLOW_SEND,
            )
        )

        flags = HeaderFlag.RED_DOT | HeaderFlag.NO_PERSIST | HeaderFlag.DUP
        await peer.write(
            peer.make_recv(
                b"incoming",
                message_id=9001,
                message_seq=seq + 1,
                flags=flags,
                expire=30,
                setting=Setting.TOPIC,
                topic="t",
            )
        )
        ack = await peer.expect(Recvack)
        assert (ack.message_id, ack.message_seq) == (9001, seq + 1)
        assert ack.flags == HeaderFlag.RED_DOT | HeaderFlag.NO_PERSIST

        await peer.expect(Ping)
        await peer.write(Pong())
        await peer.write(Disconnect(reason_code=ReasonCode.CONNECT_KICK, reason="elsewhere"))

    async def client_side(client: WKClient) -> None:
        assert client.version == version
        assert client.uid == "alice"
        assert client.node_id == (7 if version >= 4 else 0)
        assert client.connack.reason_code == ReasonCode.SUCCESS
        assert client.encrypted == encrypt

        first = await client.send("bob", ChannelType.PERSON, b"hello")
        assert first == SendResult(message_id, seq, 1, 1, first.client_msg_no)
        assert first.ok
        assert len(first.client_msg_no) == 32

        second = await client.send(
            "bob",
            ChannelType.PERSON,
            b"\x00\xffraw",
            client_msg_no="cmn-2",
            flags=HeaderFlag.NO_PERSIST,
            setting=second_setting,
            expire=60,
            topic="news",
        )
        assert second == SendResult(0, 0, ReasonCode.NOT_ALLOW_SEND, 2, "cmn-2")
        assert not second.ok

        message = await client.recv()
        assert message.payload == b"incoming"
        assert (message.message_id, message.message_seq) == (9001, seq + 1)
        assert (message.from_uid, message.channel_id, message.channel_type) == ("bob", "bob", 1)
        assert message.client_msg_no == "cmn-recv"
        assert message.topic == "t"
        assert message.expire == (30 if version >= 3 else 0)
        assert message.flags == HeaderFlag.RED_DOT | HeaderFlag.NO_PERSIST | HeaderFlag.DUP
        assert message.setting == Setting.TOPIC
        assert abs(message.timestamp - time.time()) < 60
        assert (message.recv.payload != b"incoming") == encrypt

        await client.ping()
        await client.wait_closed(5)
        assert client.disconnect == Disconnect(ReasonCode.CONNECT_KICK, "elsewhere")
        assert client.bad_msg_keys == 0
        with pytest.raises(ClientClosed):
            await client.send("bob", 1, b"late")
        with pytest.raises(ClientClosed):
            await client.recv(1)
        with pytest.raises(ClientClosed):
            await client.ping()

    run(
        lambda: session(
            transport,
            peer_side,
            client_side,
            version=version,
            encrypt=encrypt,
            device_flag=1,
            device_id="dev-1",
        )
    )


# --- login --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_connack_failure_raises_connect_refused(transport: Transport) -> None:
    async def main() -> None:
        async with fake_server(transport) as server, trio.open_nursery() as nursery:

            async def refuse() -> None:
                peer = await server.accept()
                await peer.accept_login(reason_code=ReasonCode.AUTH_FAIL)

            nursery.start_soon(refuse)
            with pytest.raises(ConnectRefused) as info:
                async with open_client(
                    "127.0.0.1", server.port, uid="alice", token="wrong", transport=transport
                ):
                    pytest.fail("a refused login must not yield a client")
            assert info.value.reason_code == ReasonCode.AUTH_FAIL
            assert not isinstance(info.value, ClientClosed)

    run(main)


def test_socket_closed_before_connack() -> None:
    async def main() -> None:
        async with fake_server("tcp") as server, trio.open_nursery() as nursery:

            async def hang_up() -> None:
                peer = await server.accept()
                await peer.expect(Connect)
                await peer.close()

            nursery.start_soon(hang_up)
            with pytest.raises(ClosedBeforeConnack) as info:
                async with open_client("127.0.0.1", server.port, uid="alice", token="t"):
                    pass
            assert isinstance(info.value, ConnectRefused)
            assert isinstance(info.value, ClientClosed)
            assert info.value.reason_code == 0

    run(main)


def test_disconnect_instead_of_connack_is_a_refusal() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.expect(Connect)
        await peer.write(Disconnect(reason_code=ReasonCode.BAN, reason="banned"))

    async def main() -> None:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer_side, Peer.over_stream(server_stream))
            with pytest.raises(ConnectRefused) as info:
                async with open_client_over(client_stream, uid="alice", token="t"):
                    pass
            assert info.value.reason_code == ReasonCode.BAN

    run(main)


def test_garbage_instead_of_connack_is_a_client_error() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.expect(Connect)
        await peer.write_raw(b"\xf0\x00")

    async def main() -> None:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer_side, Peer.over_stream(server_stream))
            with pytest.raises(ClientError, match="undecodable"):
                async with open_client_over(client_stream, uid="alice", token="t"):
                    pass

    run(main)


def test_connect_timeout_when_no_connack() -> None:
    async def main() -> None:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        with pytest.raises(trio.TooSlowError):
            async with open_client_over(client_stream, uid="alice", token="t", connect_timeout_s=3):
                pass
        await server_stream.aclose()

    run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_server_may_negotiate_a_lower_version() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login(server_version=5)
        send = await peer.expect(Send)
        assert peer.open_send(send) == b"x"
        # A u32 message_seq: the client must decode at version 5, not the 6 it asked for.
        await peer.write(Sendack(1, send.client_seq, 4_000_000_000, ReasonCode.SUCCESS))
        await peer.write(peer.make_recv(b"y", message_id=2, message_seq=3))
        ack = await peer.expect(Recvack)
        assert ack.message_seq == 3

    async def client_side(client: WKClient) -> None:
        assert client.version == 5
        result = await client.send("bob", 1, b"x")
        assert result.message_seq == 4_000_000_000
        assert (await client.recv()).payload == b"y"

    run(lambda: in_memory(peer_side, client_side, version=6))


def test_server_without_key_gives_a_plain_session() -> None:
    async def peer_side(peer: Peer) -> None:
        connect = await peer.accept_login(give_key=False)
        assert connect.client_key
        send = await peer.expect(Send)
        assert send.payload == b"plain" and send.msg_key == ""

        await peer.write(Sendack(1, send.client_seq, 1, ReasonCode.SUCCESS))

    async def client_side(client: WKClient) -> None:
        assert not client.encrypted
        assert (await client.send("bob", 1, b"plain")).ok

    run(lambda: in_memory(peer_side, client_side))


def test_a_bad_server_key_is_a_client_error() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.expect(Connect)
        await peer.write(Connack(0, ReasonCode.SUCCESS, "not base64!", new_salt(), 1, 6))

    async def main() -> None:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer_side, Peer.over_stream(server_stream))
            with pytest.raises(ClientError, match="key"):
                async with open_client_over(client_stream, uid="alice", token="t"):
                    pass

    run(main)


# --- receiving ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_recv_with_bad_msg_key_is_dropped_and_counted(version: int) -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        await peer.write(
            peer.make_recv(b"forged", message_id=1, message_seq=1, bad_msg_key=True),
            peer.make_recv(b"genuine", message_id=2, message_seq=2),
        )
        # Only the genuine message is acknowledged, like the JS SDK.
        ack = await peer.expect(Recvack)
        assert ack.message_id == 2

    async def client_side(client: WKClient) -> None:
        message = await client.recv()
        assert message.payload == b"genuine"
        assert client.bad_msg_keys == 1
        assert client.pending_messages() == 0

    run(lambda: in_memory(peer_side, client_side, version=version))


def test_recv_with_valid_key_but_undecryptable_payload_is_dropped() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        assert peer.cipher is not None
        bad = peer.make_recv(b"", message_id=1, message_seq=1)
        bad.payload = b"!!not base64!!"
        sign = recv_sign(1, 1, bad.client_msg_no, bad.timestamp, "bob", "bob", 1, bad.payload)
        bad.msg_key = peer.cipher.msg_key(sign)
        await peer.write(bad, peer.make_recv(b"ok", message_id=2, message_seq=2))
        assert (await peer.expect(Recvack)).message_id == 2

    async def client_side(client: WKClient) -> None:
        assert (await client.recv()).payload == b"ok"
        assert (client.bad_payloads, client.bad_msg_keys) == (1, 0)

    run(lambda: in_memory(peer_side, client_side))


def test_recv_with_no_encrypt_setting_is_taken_as_plain() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        await peer.write(
            peer.make_recv(b"clear", message_id=5, message_seq=6, setting=Setting.NO_ENCRYPT)
        )
        await peer.expect(Recvack)

    async def client_side(client: WKClient) -> None:
        message = await client.recv()
        assert message.payload == message.recv.payload == b"clear"
        assert message.recv.msg_key == ""

    run(lambda: in_memory(peer_side, client_side))


def test_auto_recvack_off_lets_the_caller_ack() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        await peer.write(peer.make_recv(b"m", message_id=8, message_seq=9, flags=0))
        # The PING the client sends after recv() comes first: no RECVACK was written for it.
        await peer.expect(Ping)
        await peer.write(Pong())
        ack = await peer.expect(Recvack)
        assert (ack.message_id, ack.message_seq, ack.flags) == (8, 9, 0)

    async def client_side(client: WKClient) -> None:
        message = await client.recv()
        await client.ping()
        await client.recvack(message)

    run(lambda: in_memory(peer_side, client_side, auto_recvack=False))


def test_messages_received_before_the_end_are_still_delivered() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        await peer.write(
            peer.make_recv(b"1", message_id=1, message_seq=1),
            peer.make_recv(b"2", message_id=2, message_seq=2),
        )
        await peer.expect(Recvack)
        await peer.expect(Recvack)
        await peer.close()

    async def client_side(client: WKClient) -> None:
        await client.wait_closed(5)
        assert client.disconnect is None
        assert [(await client.recv()).payload for _ in range(2)] == [b"1", b"2"]
        with pytest.raises(ClientClosed):
            await client.recv()

    run(lambda: in_memory(peer_side, client_side))


def test_other_frames_are_kept() -> None:
    event = Event(id="e1", type="stream.delta", timestamp=1, data=b"{}")

    async def peer_side(peer: Peer) -> None:
        await peer.accept_login(extra=encode(event, 6))
        await peer.expect(Ping)
        await peer.write(Pong())

    async def client_side(client: WKClient) -> None:
        # The PONG follows the EVENT on the stream, so once ping() returns the EVENT was read.
        await client.ping()
        assert client.other_frames == [event]

    run(lambda: in_memory(peer_side, client_side))


# --- sending ------------------------------------------------------------------------------


def test_send_timeout_raises_too_slow_and_keeps_the_connection() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        unanswered = await peer.expect(Send)
        answered = await peer.expect(Send)
        await peer.write(Sendack(3, answered.client_seq, 4, ReasonCode.SUCCESS))
        # A late answer to the timed-out SEND is parked, not mistaken for another.
        await peer.write(Sendack(1, unanswered.client_seq, 2, ReasonCode.SUCCESS))

    async def client_side(client: WKClient) -> None:
        with pytest.raises(trio.TooSlowError):
            await client.send("bob", 1, b"lost", timeout_s=2)
        result = await client.send("bob", 1, b"next")
        assert (result.client_seq, result.message_id) == (2, 3)
        late = await client.wait_sendack(1)
        assert late.message_id == 1

    run(
        lambda: in_memory(peer_side, client_side),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )


def test_pending_send_gets_client_closed_when_the_server_hangs_up() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        await peer.expect(Send)
        await peer.close()

    async def client_side(client: WKClient) -> None:
        with pytest.raises(ClientClosed):
            await client.send("bob", 1, b"x")
        assert client.closed.is_set()

    run(lambda: in_memory(peer_side, client_side))


def test_pending_ping_gets_client_closed_on_disconnect() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        await peer.expect(Ping)
        await peer.write(Disconnect(ReasonCode.CONNECT_KICK, "bye"))

    async def client_side(client: WKClient) -> None:
        with pytest.raises(ClientClosed, match="DISCONNECT"):
            await client.ping()
        assert client.disconnect is not None

    run(lambda: in_memory(peer_side, client_side))


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_concurrent_sends_are_matched_by_client_seq(transport: Transport) -> None:
    count = 20

    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        sends = [await peer.expect(Send) for _ in range(count)]
        assert sorted(s.client_seq for s in sends) == list(range(1, count + 1))
        for send in reversed(sends):
            body = peer.open_send(send)
            await peer.write(Sendack(1000 + int(body), send.client_seq, 1, ReasonCode.SUCCESS))

    async def client_side(client: WKClient) -> None:
        results: dict[int, SendResult] = {}

        async def one(i: int) -> None:
            results[i] = await client.send("g1", ChannelType.GROUP, str(i).encode())

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
        assert {i: r.message_id for i, r in results.items()} == {i: 1000 + i for i in range(count)}

    run(lambda: session(transport, peer_side, client_side))


@pytest.mark.parametrize("encrypt", [True, False], ids=["enc", "plain"])
def test_crafted_send_frame_and_wait_sendack(encrypt: bool) -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        send = await peer.expect(Send)
        if encrypt:
            with pytest.raises(AssertionError, match="msgKey"):
                peer.open_send(send)
        await peer.write(Sendack(0, send.client_seq, 0, ReasonCode.PAYLOAD_DECODE_ERROR))
        await peer.expect(Ping)
        await peer.write(Pong())

    async def client_side(client: WKClient) -> None:
        seq = client.next_client_seq()
        await client.send_frame(Send(0, seq, "cmn", "bob", 1, b"payload", msg_key="0" * 32))
        # Once PONG is back the SENDACK before it has been read, so it waits parked.
        await client.ping()
        result = await client.wait_sendack(seq)
        assert (result.client_seq, result.reason_code) == (seq, ReasonCode.PAYLOAD_DECODE_ERROR)

    run(lambda: in_memory(peer_side, client_side, encrypt=encrypt))


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_send_bytes_writes_raw_bytes(transport: Transport) -> None:
    garbage = b"\x00\x01garbage" * 100

    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        received = b""
        while len(received) < len(garbage):
            received += await peer.read_raw()
            if peer.ws:
                break  # one WebSocket message holds all of it
        assert received == garbage

    async def client_side(client: WKClient) -> None:
        await client.send_bytes(garbage)

    run(lambda: session(transport, peer_side, client_side))


def test_a_stalled_write_gives_up_the_connection() -> None:
    async def main() -> None:
        # Lockstep: a write completes only once the other side has read it.
        client_stream, server_stream = trio.testing.lockstep_stream_pair()
        peer = Peer.over_stream(server_stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.accept_login)
            async with open_client_over(client_stream, uid="alice", token="t") as client:
                # The peer no longer reads; the shielded write outlives the send's own timeout.
                with pytest.raises(ClientClosed, match="stalled"):
                    await client.send("bob", 1, b"x", timeout_s=1)
                assert client.closed.is_set()

    run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_undecodable_server_data_closes_the_client() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        await peer.write_raw(b"\x00\x00")

    async def client_side(client: WKClient) -> None:
        await client.wait_closed(5)
        assert isinstance(client.error, UnknownFrameType)
        with pytest.raises(ClientClosed, match="undecodable"):
            await client.send("bob", 1, b"x")

    run(lambda: in_memory(peer_side, client_side))


# --- lifecycle ----------------------------------------------------------------------------


def test_user_exceptions_leave_the_context_unwrapped() -> None:
    async def main() -> None:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        peer = Peer.over_stream(server_stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.accept_login)
            with pytest.raises(KeyError, match="mine"):
                async with open_client_over(client_stream, uid="alice", token="t"):
                    raise KeyError("mine")

    run(main)


def test_aclose_ends_the_session_for_the_server_too() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()
        assert await peer.read_frame() is None

    async def client_side(client: WKClient) -> None:
        await client.aclose()
        assert client.closed.is_set()
        with pytest.raises(ClientClosed):
            await client.ping()

    run(lambda: in_memory(peer_side, client_side))


def test_wait_closed_times_out_while_open() -> None:
    async def peer_side(peer: Peer) -> None:
        await peer.accept_login()

    async def client_side(client: WKClient) -> None:
        with pytest.raises(trio.TooSlowError):
            await client.wait_closed(1)

    run(
        lambda: in_memory(peer_side, client_side),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )


# --- WebSocket framing --------------------------------------------------------------------


def test_ws_path_and_frames_spanning_or_sharing_messages() -> None:
    async def peer_side(peer: Peer) -> None:
        assert peer.path == "/wkproto"
        connect = await peer.expect(Connect)
        assert connect.version == 6
        # Log in by hand so that the CONNACK can share a message with half of a RECV.
        keys = KeyPair()
        salt = new_salt()
        peer.cipher = SessionCipher(keys.aes_key(connect.client_key), salt.encode())
        connack = Connack(0, ReasonCode.SUCCESS, keys.public_b64, salt, 3, 6)
        one = encode(peer.make_recv(b"one", message_id=1, message_seq=1), 6)
        two = encode(peer.make_recv(b"two", message_id=2, message_seq=2), 6)
        three = encode(peer.make_recv(b"three", message_id=3, message_seq=3), 6)
        await peer.write_raw(encode(connack, 6) + one[:5])
        await peer.write_raw(one[5:] + two + three[:1])
        await peer.write_raw(three[1:])
        for message_id in (1, 2, 3):
            assert (await peer.expect(Recvack)).message_id == message_id
        # Each client write was one whole frame in one message (``expect`` decodes each alone).
        assert len(peer.raw_messages) == 4

    async def client_side(client: WKClient) -> None:
        assert client.node_id == 3
        assert [(await client.recv()).payload for _ in range(3)] == [b"one", b"two", b"three"]

    run(lambda: session("ws", peer_side, client_side, ws_path="/wkproto"))


def test_ws_rejected_handshake_raises_connection_rejected() -> None:
    async def main() -> None:
        async def reject(request: trio_websocket.WebSocketRequest) -> None:
            await request.reject(404)

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(trio_websocket.serve_websocket, reject, "127.0.0.1", 0, None)
            )
            with pytest.raises(trio_websocket.ConnectionRejected):
                async with open_client(
                    "127.0.0.1", server.port, uid="a", token="t", transport="ws", ws_path="/x"
                ):
                    pass
            nursery.cancel_scope.cancel()

    run(main)
