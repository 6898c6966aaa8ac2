"""The project's own WKProto client: one trio session over TCP or WebSocket.

It does what the official SDKs do (X25519 handshake, AES payloads, msgKey on SEND and RECV,
RECVACK mirroring the RECV flags) and keeps the raw frames and counters a test needs to check the
server's side of each rule. Usage::

    async with open_client("127.0.0.1", 5100, uid="u1", token="t") as client:
        result = await client.send("u2", ChannelType.PERSON, b"hi")
        message = await client.recv()
"""

from __future__ import annotations

import math
import ssl
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, Literal, TypedDict, TypeVar

import trio

from proto.wkproto import (
    Connack,
    Connect,
    CryptoError,
    Disconnect,
    Frame,
    FrameDecoder,
    HeaderFlag,
    Ping,
    Pong,
    ProtocolError,
    ReasonCode,
    Recv,
    Recvack,
    Send,
    Sendack,
    Setting,
    encode,
)
from proto.wkproto.crypto import KeyPair, SessionCipher, recv_sign, send_sign

from ._groups import sole_exception
from .errors import ClientClosed, ClientError, ClosedBeforeConnack, ConnectRefused
from .transport import StreamTransport, Transport, connect_tcp, connect_ws

__all__ = [
    "ClientClosed",
    "ClientError",
    "ConnectRefused",
    "ReceivedMessage",
    "SendResult",
    "WKClient",
    "open_client",
    "open_client_over",
]

WRITE_TIMEOUT_S = 10.0
"""Writes are shielded from cancellation (a half-written frame would desynchronise the stream for
good), so a peer that stops reading needs its own bound; past it the connection is given up."""

MAX_PARKED_SENDACKS = 1024
"""SENDACKs nobody waits for yet (crafted SENDs, late answers to timed-out sends) are kept for
``wait_sendack``; the bound stops a long session from growing without limit."""

RECVACK_MIRRORED_FLAGS = HeaderFlag.NO_PERSIST | HeaderFlag.RED_DOT | HeaderFlag.SYNC_ONCE
"""The RECV flags a RECVACK echoes, as the JS SDK does; DUP describes the RECV itself and the
server reads NoPersist/SyncOnce from the RECVACK to pick its bookkeeping."""

T = TypeVar("T")


class SendOptions(TypedDict, total=False):
    """``WKClient.send``'s options that wrappers pass through unchanged."""

    flags: int
    setting: int
    expire: int
    topic: str


@dataclass(frozen=True, slots=True)
class SendResult:
    message_id: int
    message_seq: int
    reason_code: int
    client_seq: int
    client_msg_no: str

    @property
    def ok(self) -> bool:
        return self.reason_code == ReasonCode.SUCCESS


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    from_uid: str
    channel_id: str
    channel_type: int
    client_msg_no: str
    message_id: int
    message_seq: int
    timestamp: int
    payload: bytes
    """Decrypted; ``recv.payload`` keeps the bytes as they were on the wire."""
    setting: int
    flags: int
    expire: int
    topic: str
    recv: Recv


class _Waiter(Generic[T]):
    """One caller waiting for one answer; woken with no value when the connection ends."""

    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: T | None = None

    def resolve(self, value: T) -> None:
        self.value = value
        self.event.set()


class WKClient:
    """A connected, logged-in session. Obtain one from ``open_client``."""

    def __init__(
        self,
        transport: Transport,
        decoder: FrameDecoder,
        *,
        uid: str,
        connack: Connack,
        version: int,
        cipher: SessionCipher | None,
        auto_recvack: bool,
    ) -> None:
        self.uid = uid
        self.connack = connack
        self.version = version
        """The negotiated protocol version every frame after CONNACK is encoded with."""
        self.node_id = connack.node_id
        self.cipher = cipher
        """The session's AES state; ``None`` when the session is not encrypted. Exposed so that
        tests can craft correctly (or deliberately wrongly) encrypted frames."""
        self.auto_recvack = auto_recvack
        self.disconnect: Disconnect | None = None
        self.closed = trio.Event()
        self.close_reason = ""
        self.error: ProtocolError | None = None
        """Set when the server sent bytes the codec could not frame; the session was closed."""
        self.bad_msg_keys = 0
        """RECVs dropped (not acknowledged) because their msgKey did not verify."""
        self.bad_payloads = 0
        """RECVs dropped because the msgKey verified but the payload would not decrypt."""
        self.other_frames: list[Frame] = []
        """Frames the session has no use for (EVENT, SUBACK, a second CONNACK...), in order."""

        self._transport = transport
        self._decoder = decoder
        self._write_lock = trio.Lock()
        self._transport_closing = False
        self._transport_closed = trio.Event()
        self._last_client_seq = 0
        self._pending: dict[int, _Waiter[Sendack]] = {}
        self._parked: OrderedDict[int, Sendack] = OrderedDict()
        self._pong: _Waiter[Pong] = _Waiter()
        # Unbounded so that a caller who never calls recv() cannot stall the reader, which also
        # delivers the SENDACKs and PONGs other callers wait for.
        self._inbox_in, self._inbox_out = trio.open_memory_channel[ReceivedMessage](math.inf)

    @property
    def encrypted(self) -> bool:
        return self.cipher is not None

    # --- sending ---------------------------------------------------------------------------

    def next_client_seq(self) -> int:
        """Reserve a client_seq, for a SEND crafted by hand and passed to ``send_frame``."""
        self._last_client_seq += 1
        return self._last_client_seq

    async def send(
        self,
        channel_id: str,
        channel_type: int,
        payload: bytes,
        *,
        client_msg_no: str | None = None,
        flags: int = HeaderFlag.RED_DOT,
        setting: int = 0,
        expire: int = 0,
        topic: str = "",
        timeout_s: float = 10.0,
    ) -> SendResult:
        """SEND a message and wait for its SENDACK. A non-empty ``topic`` sets Setting.TOPIC,
        without which the codec would leave the topic off the wire."""
        client_seq = self.next_client_seq()
        if client_msg_no is None:
            client_msg_no = uuid.uuid4().hex
        if topic:
            setting |= Setting.TOPIC
        wire = payload
        msg_key = ""
        if self.cipher is not None and not setting & Setting.NO_ENCRYPT:
            wire = self.cipher.encrypt(payload)
            sign = send_sign(client_seq, client_msg_no, channel_id, channel_type, wire)
            msg_key = self.cipher.msg_key(sign)
        frame = Send(
            setting=int(setting),
            client_seq=client_seq,
            client_msg_no=client_msg_no,
            channel_id=channel_id,
            channel_type=int(channel_type),
            payload=wire,
            msg_key=msg_key,
            expire=expire,
            topic=topic,
            flags=int(flags),
        )
        with trio.fail_after(timeout_s):
            waiter = self._expect_sendack(client_seq)
            try:
                await self.send_frame(frame)
                ack = await self._wait(waiter)
            finally:
                self._pending.pop(client_seq, None)
        return SendResult(
            message_id=ack.message_id,
            message_seq=ack.message_seq,
            reason_code=ack.reason_code,
            client_seq=client_seq,
            client_msg_no=client_msg_no,
        )

    async def wait_sendack(self, client_seq: int, timeout_s: float = 10.0) -> SendResult:
        """The SENDACK for a SEND written with ``send_frame``, whether or not it already came."""
        with trio.fail_after(timeout_s):
            ack = self._parked.pop(client_seq, None)
            if ack is None:
                waiter = self._expect_sendack(client_seq)
                try:
                    ack = await self._wait(waiter)
                finally:
                    self._pending.pop(client_seq, None)
        return SendResult(
            message_id=ack.message_id,
            message_seq=ack.message_seq,
            reason_code=ack.reason_code,
            client_seq=ack.client_seq,
            client_msg_no=ack.client_msg_no,
        )

    async def send_frame(self, frame: Frame) -> None:
        """Encode ``frame`` at the negotiated version and write it as is."""
        await self.send_bytes(encode(frame, self.version))

    async def send_bytes(self, raw: bytes) -> None:
        """Write raw bytes (one WebSocket message on WS), for garbage and oversize tests."""
        async with self._write_lock:
            if self.closed.is_set():
                raise self._closed_error()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(WRITE_TIMEOUT_S) as stalled:
                    try:
                        await self._transport.send_message(raw)
                    except ClientClosed as e:
                        self._mark_closed(f"write failed: {e}")
                        raise
                if stalled.cancelled_caught:
                    self._mark_closed(f"a write stalled for {WRITE_TIMEOUT_S}s")
                    await self._close_transport()
                    raise self._closed_error()

    async def recvack(self, message: ReceivedMessage | Recv) -> None:
        """Acknowledge a RECV; only needed with ``auto_recvack=False``."""
        recv = message.recv if isinstance(message, ReceivedMessage) else message
        flags = recv.flags & RECVACK_MIRRORED_FLAGS
        await self.send_frame(
            Recvack(message_id=recv.message_id, message_seq=recv.message_seq, flags=flags)
        )

    async def ping(self, timeout_s: float = 5.0) -> None:
        """Send a PING and wait for a PONG."""
        with trio.fail_after(timeout_s):
            # Taken before writing so that a PONG arriving at once still counts.
            waiter = self._pong
            await self.send_frame(Ping())
            await self._wait(waiter)

    # --- receiving -------------------------------------------------------------------------

    async def recv(self, timeout_s: float = 10.0) -> ReceivedMessage:
        """The next message; those that arrived before the connection ended are still given
        out, then ``ClientClosed`` is raised."""
        with trio.fail_after(timeout_s):
            try:
                return await self._inbox_out.receive()
            except trio.EndOfChannel:
                raise self._closed_error() from None

    async def recv_where(
        self, want: Callable[[ReceivedMessage], bool], timeout_s: float = 10.0
    ) -> ReceivedMessage:
        """The next message for which ``want`` is true; the ones before it are dropped.

        Useful after connecting: a message committed just before the connection may still be
        pushed to it, because delivery runs after the commit, not before the sender's answer."""
        with trio.fail_after(timeout_s):
            while True:
                got = await self.recv(timeout_s)
                if want(got):
                    return got

    def pending_messages(self) -> int:
        """Received messages not yet taken with ``recv``."""
        return self._inbox_out.statistics().current_buffer_used

    # --- lifecycle -------------------------------------------------------------------------

    async def wait_closed(self, timeout_s: float) -> None:
        with trio.fail_after(timeout_s):
            await self.closed.wait()

    async def aclose(self) -> None:
        self._mark_closed("closed by the client")
        await self._close_transport()

    # --- internals -------------------------------------------------------------------------

    def _expect_sendack(self, client_seq: int) -> _Waiter[Sendack]:
        if self.closed.is_set():
            raise self._closed_error()
        waiter: _Waiter[Sendack] = _Waiter()
        self._pending[client_seq] = waiter
        return waiter

    async def _wait(self, waiter: _Waiter[T]) -> T:
        await waiter.event.wait()
        if waiter.value is None:
            raise self._closed_error()
        return waiter.value

    def _closed_error(self) -> ClientClosed:
        return ClientClosed(self.close_reason or "connection closed")

    def _mark_closed(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        # Waking a waiter without a value makes it raise ClientClosed.
        for waiter in self._pending.values():
            waiter.event.set()
        self._pending.clear()
        self._pong.event.set()
        self._inbox_in.close()

    async def _close_transport(self) -> None:
        # The reader and aclose() may both get here; the second waits for the first so that
        # leaving the session does not cut a WebSocket close handshake short.
        if self._transport_closing:
            await self._transport_closed.wait()
            return
        self._transport_closing = True
        try:
            await self._transport.aclose()
        finally:
            self._transport_closed.set()

    async def _run_reader(self) -> None:
        try:
            while not self.closed.is_set():
                frame = self._decoder.next_frame()
                if frame is not None:
                    await self._dispatch(frame)
                    continue
                data = await self._transport.receive_some()
                if not data:
                    self._mark_closed("connection closed by the server")
                    break
                self._decoder.feed(data)
        except ProtocolError as e:
            self.error = e
            self._mark_closed(f"undecodable data from the server: {e!r}")
        except ClientClosed as e:
            self._mark_closed(str(e))
        finally:
            self._mark_closed("reader stopped")
            await self._close_transport()

    async def _dispatch(self, frame: Frame) -> None:
        match frame:
            case Sendack():
                waiter = self._pending.pop(frame.client_seq, None)
                if waiter is not None:
                    waiter.resolve(frame)
                else:
                    self._parked[frame.client_seq] = frame
                    if len(self._parked) > MAX_PARKED_SENDACKS:
                        self._parked.popitem(last=False)
            case Recv():
                await self._on_recv(frame)
            case Pong():
                waiter_pong, self._pong = self._pong, _Waiter()
                waiter_pong.resolve(frame)
            case Disconnect():
                self.disconnect = frame
                self._mark_closed(f"DISCONNECT reason {frame.reason_code}: {frame.reason!r}")
            case _:
                self.other_frames.append(frame)

    async def _on_recv(self, frame: Recv) -> None:
        payload = frame.payload
        if self.cipher is not None and not frame.setting & Setting.NO_ENCRYPT:
            sign = recv_sign(
                frame.message_id,
                frame.message_seq,
                frame.client_msg_no,
                frame.timestamp,
                frame.from_uid,
                frame.channel_id,
                frame.channel_type,
                frame.payload,
            )
            if self.cipher.msg_key(sign) != frame.msg_key:
                self.bad_msg_keys += 1
                return
            try:
                payload = self.cipher.decrypt(frame.payload)
            except CryptoError:
                self.bad_payloads += 1
                return
        # Queued before the RECVACK is written, so a message that arrived is never lost to a
        # write that fails because the connection just ended.
        self._inbox_in.send_nowait(
            ReceivedMessage(
                from_uid=frame.from_uid,
                channel_id=frame.channel_id,
                channel_type=frame.channel_type,
                client_msg_no=frame.client_msg_no,
                message_id=frame.message_id,
                message_seq=frame.message_seq,
                timestamp=frame.timestamp,
                payload=payload,
                setting=frame.setting,
                flags=frame.flags,
                expire=frame.expire,
                topic=frame.topic,
                recv=frame,
            )
        )
        if self.auto_recvack:
            await self.recvack(frame)


# --- opening a session ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Login:
    uid: str
    token: str
    version: int
    device_flag: int
    device_id: str
    encrypt: bool
    connect_timeout_s: float
    auto_recvack: bool


async def _handshake(transport: Transport, login: _Login) -> WKClient:
    keys = KeyPair() if login.encrypt else None
    connect = Connect(
        version=login.version,
        device_flag=login.device_flag,
        device_id=login.device_id,
        uid=login.uid,
        token=login.token,
        client_timestamp=int(time.time() * 1000),
        client_key=keys.public_b64 if keys is not None else "",
    )
    try:
        await transport.send_message(encode(connect, login.version))
    except ClientClosed:
        raise ClosedBeforeConnack() from None

    # CONNACK's layout does not depend on the version (a header bit says whether server_version
    # is there), so the requested version decodes it; the negotiated one applies after it.
    decoder = FrameDecoder(login.version)
    try:
        while (frame := decoder.next_frame()) is None:
            data = await transport.receive_some()
            if not data:
                raise ClosedBeforeConnack()
            decoder.feed(data)
    except ProtocolError as e:
        raise ClientError(f"undecodable answer to CONNECT: {e!r}") from e

    if isinstance(frame, Disconnect):
        raise ConnectRefused(frame.reason_code, f"DISCONNECT instead of CONNACK: {frame}")
    if not isinstance(frame, Connack):
        raise ClientError(f"expected CONNACK, got {frame!r}")
    if frame.reason_code != ReasonCode.SUCCESS:
        raise ConnectRefused(frame.reason_code)

    version = min(login.version, frame.server_version or login.version)
    decoder.version = version
    cipher = None
    # A server with encryption switched off answers without a key; the session is then plain,
    # which ``WKClient.encrypted`` reports.
    if keys is not None and frame.server_key:
        try:
            cipher = SessionCipher(keys.aes_key(frame.server_key), frame.salt.encode())
        except CryptoError as e:
            raise ClientError(f"unusable CONNACK key material: {e}") from e
    return WKClient(
        transport,
        decoder,
        uid=login.uid,
        connack=frame,
        version=version,
        cipher=cipher,
        auto_recvack=login.auto_recvack,
    )


@asynccontextmanager
async def _session(
    connect: Callable[[trio.Nursery], Awaitable[Transport]], login: _Login
) -> AsyncIterator[WKClient]:
    with sole_exception():
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(login.connect_timeout_s):
                    transport = await connect(nursery)
                    try:
                        client = await _handshake(transport, login)
                    except BaseException:
                        await trio.aclose_forcefully(transport)
                        raise
            except BaseException:
                # A WebSocket's own reader task may still be running in the nursery.
                nursery.cancel_scope.cancel()
                raise
            nursery.start_soon(client._run_reader)
            try:
                yield client
            finally:
                try:
                    await client.aclose()
                finally:
                    nursery.cancel_scope.cancel()


def _login(
    *,
    uid: str,
    token: str,
    version: int,
    device_flag: int,
    device_id: str | None,
    encrypt: bool,
    connect_timeout_s: float,
    auto_recvack: bool,
) -> _Login:
    return _Login(
        uid=uid,
        token=token,
        version=version,
        device_flag=device_flag,
        device_id=device_id if device_id is not None else uuid.uuid4().hex,
        encrypt=encrypt,
        connect_timeout_s=connect_timeout_s,
        auto_recvack=auto_recvack,
    )


@asynccontextmanager
async def open_client(
    host: str,
    port: int,
    *,
    uid: str,
    token: str,
    version: int = 6,
    device_flag: int = 0,
    device_id: str | None = None,
    encrypt: bool = True,
    transport: Literal["tcp", "ws"] = "tcp",
    ws_path: str = "/",
    connect_timeout_s: float = 5.0,
    auto_recvack: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[WKClient]:
    """Connect, log in and yield the session; it is closed when the block ends.

    ``ssl_context`` with ``transport="ws"`` connects over ``wss://`` (the node's
    ``gateway.wss_port``), e.g. ``ssl.create_default_context(cafile="ca.pem")``; the TCP port
    has no TLS.

    Raises ``ConnectRefused`` for a CONNACK other than SUCCESS (``ClosedBeforeConnack``, both a
    ``ConnectRefused`` with reason 0 and a ``ClientClosed``, when the socket closes first),
    ``trio.TooSlowError`` when connecting and logging in take over ``connect_timeout_s``, and
    ``OSError`` (or a trio_websocket ``HandshakeError``) when the transport cannot be opened.
    """
    if transport not in ("tcp", "ws"):
        raise ValueError(f"unknown transport {transport!r}")
    if ssl_context is not None and transport != "ws":
        raise ValueError("TLS is served over WebSocket only (wss): use transport='ws'")

    async def connect(nursery: trio.Nursery) -> Transport:
        if transport == "ws":
            return await connect_ws(nursery, host, port, ws_path, ssl_context)
        return await connect_tcp(host, port)

    login = _login(
        uid=uid,
        token=token,
        version=version,
        device_flag=device_flag,
        device_id=device_id,
        encrypt=encrypt,
        connect_timeout_s=connect_timeout_s,
        auto_recvack=auto_recvack,
    )
    async with _session(connect, login) as client:
        yield client


@asynccontextmanager
async def open_client_over(
    stream: Transport | trio.abc.Stream,
    *,
    uid: str,
    token: str,
    version: int = 6,
    device_flag: int = 0,
    device_id: str | None = None,
    encrypt: bool = True,
    connect_timeout_s: float = 5.0,
    auto_recvack: bool = True,
) -> AsyncIterator[WKClient]:
    """``open_client`` over a stream that is already open (an in-memory pair in tests, a TLS
    stream...); the stream is closed with the session."""
    transport = stream if isinstance(stream, Transport) else StreamTransport(stream)

    async def connect(nursery: trio.Nursery) -> Transport:
        return transport

    login = _login(
        uid=uid,
        token=token,
        version=version,
        device_flag=device_flag,
        device_id=device_id,
        encrypt=encrypt,
        connect_timeout_s=connect_timeout_s,
        auto_recvack=auto_recvack,
    )
    async with _session(connect, login) as client:
        yield client
