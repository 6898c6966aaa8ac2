"""The server side of a WebSocket connection, on wsproto over a trio stream.

wsproto is the sans-IO protocol; this module is the little IO around it that the gateway
needs: the upgrade, whole messages in, one message per frame out, and the close handshake.
trio-websocket did this before, but it answers a PING with a PONG in whatever state the
connection is in; once the server has sent its CLOSE, wsproto refuses the PONG with
``LocalProtocolError`` inside trio-websocket's reader task, which runs in the listener's
nursery, so one client pinging a closing connection ended the node (ADR 011).

Here every write goes through :meth:`WsConnection._send`, which asks wsproto's state first:
an event the state does not allow (a PONG after our CLOSE, a message after theirs) is simply
not sent. Reads and the answers they need (PONG, the CLOSE reply) happen in the reading task;
message writes come from the session's writer task; one lock orders them on the stream.
"""

from __future__ import annotations

import contextlib
import re

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

RECEIVE_BYTES = 65536
MAX_UPGRADE_HEAD_BYTES = 16 * 1024
"""The upgrade request's line and headers together: h11's limit on a head still incomplete
(wsproto keeps its default), held also for a head that arrives whole in one read."""
_HEAD_END = re.compile(rb"\n\r?\n")
"""Where h11 ends a head: the first blank line, with or without its CR."""
CLOSE_WAIT_S = 0.5
"""How long the server waits for the peer's answer to its CLOSE before closing TCP."""

_SENDABLE: dict[type[Event], frozenset[ConnectionState]] = {
    # What wsproto accepts in each state (wsproto/connection.py, Connection.send).
    Message: frozenset({ConnectionState.OPEN}),
    Ping: frozenset({ConnectionState.OPEN}),
    Pong: frozenset({ConnectionState.OPEN}),
    CloseConnection: frozenset({ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING}),
}


class HandshakeFailed(Exception):
    """The peer did not complete a WebSocket upgrade (answered with 400 where possible)."""


class WsConnection:
    """One accepted WebSocket. Not thread-safe; one reader task and any number of writers."""

    def __init__(self, stream: trio.abc.Stream, max_message_bytes: int) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.SERVER)
        self._max_message = max_message_bytes
        self._lock = trio.Lock()
        self._parts: list[bytes] = []
        self._size = 0
        self._closed = False
        self.close_code: int | None = None
        """The code of the CLOSE that ended the connection (theirs or ours), if any."""

    # --- upgrade --------------------------------------------------------------------------

    async def accept(self) -> str:
        """Read the upgrade request and accept it; the request's path. Raises
        ``HandshakeFailed`` (after answering 400 where HTTP still allows) on anything else."""
        # What came so far: h11 refuses an incomplete head above the limit, so this holds at
        # most the limit and one read.
        received = bytearray()
        while True:
            data = await self._receive_some()
            if not data:
                raise HandshakeFailed("closed during the upgrade")
            received += data
            try:
                self._ws.receive_data(data)
                for event in self._ws.events():
                    if isinstance(event, Request):
                        end = _HEAD_END.search(received)
                        if end is not None and end.end() > MAX_UPGRADE_HEAD_BYTES:
                            raise RemoteProtocolError(
                                f"request line and headers exceed {MAX_UPGRADE_HEAD_BYTES} bytes",
                                event_hint=RejectConnection(),
                            )
                        await self._write(self._ws.send(AcceptConnection()))
                        return event.target
            except RemoteProtocolError as e:
                hint = e.event_hint
                if isinstance(hint, RejectConnection):
                    # A 400 where h11 can still answer; a peer that is gone gets nothing.
                    with contextlib.suppress(
                        LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError
                    ):
                        await self._write(self._ws.send(hint))
                raise HandshakeFailed(str(e)) from None

    # --- the session's transport ------------------------------------------------------------

    async def receive(self) -> bytes | str | None:
        """The next whole message (bytes for binary, str for text), or None once closed."""
        while not self._closed:
            for event in self._ws.events():
                message = await self._on_event(event)
                if message is not None:
                    return message
                if self._closed:
                    return None
            data = await self._receive_some()
            if not data:
                self._closed = True
                break
            try:
                self._ws.receive_data(data)
            except RemoteProtocolError:  # only after CLOSED, which ends the loop first
                self._closed = True
        return None

    async def send_message(self, data: bytes | str) -> None:
        """One message; raises ``trio.ClosedResourceError`` once either side has closed."""
        event = BytesMessage(data=data) if isinstance(data, bytes) else TextMessage(data=data)
        if not await self._send(event):
            raise trio.ClosedResourceError("the WebSocket is closing")

    async def aclose(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send our CLOSE (if the state still allows one), wait briefly for the peer's, then
        close the stream. Whatever arrives meanwhile is read and dropped; a PING is not
        answered, since after our CLOSE only the peer's CLOSE may come back (RFC 6455 §5.5.1)."""
        if not self._closed:
            self._closed = True
            self.close_code = self.close_code or code
            if await self._send(CloseConnection(code=code, reason=reason or None)):
                with trio.move_on_after(CLOSE_WAIT_S):
                    await self._drain_until_closed()
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await self._stream.aclose()

    async def _drain_until_closed(self) -> None:
        while self._ws.state is ConnectionState.LOCAL_CLOSING:
            data = await self._receive_some()
            if not data:
                return
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, Ping):
                    await self._send(event.response())  # refused by the state: never sent

    # --- internals --------------------------------------------------------------------------

    async def _on_event(self, event: Event) -> bytes | str | None:
        if isinstance(event, BytesMessage | TextMessage):
            data = event.data
            self._size += len(data)
            if self._size > self._max_message:
                self.close_code = CloseReason.MESSAGE_TOO_BIG
                await self._send(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG))
                self._closed = True
                return None
            self._parts.append(data)  # type: ignore[arg-type]
            if not event.message_finished:
                return None
            parts, self._parts, self._size = self._parts, [], 0
            if isinstance(event, TextMessage):
                return "".join(parts)  # type: ignore[arg-type]
            return b"".join(parts)
        if isinstance(event, Ping):
            await self._send(event.response())
        elif isinstance(event, CloseConnection):
            # Theirs (answered while the state is REMOTE_CLOSING), or the answer to ours, or a
            # protocol error wsproto turned into a CLOSE with code 1002/1007/1009 for us to send.
            self.close_code = event.code
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                await self._send(event.response())
            elif self._ws.state is ConnectionState.OPEN:
                await self._send(CloseConnection(code=event.code, reason=event.reason))
            self._closed = True
        return None

    async def _send(self, event: Event) -> bool:
        """Send ``event`` if wsproto's state allows it now; False when it does not (or the
        stream is gone). The bytes are made under the lock, so frames leave in the order in
        which wsproto produced them: a message can never follow our CLOSE on the wire."""
        async with self._lock:
            allowed = next(s for t, s in _SENDABLE.items() if isinstance(event, t))
            if self._ws.state not in allowed:
                return False
            data = self._ws.send(event)
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._closed = True
                return False
            return True

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            await self._stream.send_all(data)

    async def _receive_some(self) -> bytes:
        try:
            return bytes(await self._stream.receive_some(RECEIVE_BYTES))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
