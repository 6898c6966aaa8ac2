"""Byte transports under a WKProto session: a plain stream (TCP, or an in-memory stream in tests)
or a WebSocket carrying binary messages.

A transport is message oriented on the sending side so that a WebSocket writes one WKProto frame
per message (what SDKs do, and what a strict server may expect), and byte oriented on the
receiving side because the frames a server writes may span or share WebSocket messages.
"""

from __future__ import annotations

import ssl
from abc import abstractmethod
from typing import TYPE_CHECKING

import trio

from proto.wkproto import MAX_REMAINING_LENGTH

from .errors import ClientClosed

if TYPE_CHECKING:
    import trio_websocket

RECEIVE_CHUNK = 65536

CLOSE_TIMEOUT_S = 2.0
"""Bound on a graceful close: a peer that never answers a WebSocket close must not hang us."""

WS_MAX_MESSAGE = 4 * (MAX_REMAINING_LENGTH + 8)
"""A server may pack several full-size frames into one message; the library default (1 MiB) is
smaller than a single full-size frame with its header."""


class Transport(trio.abc.AsyncResource):
    @abstractmethod
    async def send_message(self, data: bytes) -> None:
        """Write ``data`` as one unit (one WebSocket message). Raises ``ClientClosed``."""

    @abstractmethod
    async def receive_some(self) -> bytes:
        """The next bytes from the peer; ``b""`` once the connection has ended, never raises."""


class StreamTransport(Transport):
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def send_message(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise ClientClosed(f"stream closed: {e!r}") from e

    async def receive_some(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(RECEIVE_CHUNK))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def aclose(self) -> None:
        await self.stream.aclose()


class WebSocketTransport(Transport):
    def __init__(self, connection: trio_websocket.WebSocketConnection) -> None:
        self.connection = connection

    async def send_message(self, data: bytes) -> None:
        import trio_websocket

        try:
            await self.connection.send_message(data)
        except trio_websocket.ConnectionClosed as e:
            raise ClientClosed(f"websocket closed: {e.reason}") from e

    async def receive_some(self) -> bytes:
        import trio_websocket

        while True:
            try:
                message = await self.connection.get_message()
            except trio_websocket.ConnectionClosed:
                return b""
            # A text message is not WKProto; feeding its bytes lets the decoder reject it.
            data = message.encode("utf-8") if isinstance(message, str) else message
            # An empty message is legal and must not read as end of stream.
            if data:
                return data

    async def aclose(self) -> None:
        # Cancelled or timed out, trio_websocket still closes the TCP stream underneath.
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self.connection.aclose()


async def connect_tcp(host: str, port: int) -> StreamTransport:
    # trio's SocketStream already sets TCP_NODELAY, which small frames want.
    return StreamTransport(await trio.open_tcp_stream(host, port))


async def connect_ws(
    nursery: trio.Nursery,
    host: str,
    port: int,
    path: str,
    ssl_context: ssl.SSLContext | None = None,
) -> WebSocketTransport:
    """Open ``ws://host:port{path}``, or ``wss://`` with ``ssl_context``; the library's reader
    task runs in ``nursery``. A failed TLS handshake raises an ``OSError`` (``ssl.SSLError``
    when TLS itself failed, such as a certificate the context does not trust)."""
    # Imported here so that TCP-only users never load the WebSocket stack.
    import trio_websocket

    if ssl_context is None:
        connection = await trio_websocket.connect_websocket(
            nursery,
            host,
            port,
            path,
            use_ssl=False,
            max_message_size=WS_MAX_MESSAGE,
        )
        return WebSocketTransport(connection)
    # The handshake first, here: trio_websocket (0.12.2) would wait for its upgrade answer
    # forever when the TLS handshake fails in its reader task (say, an unknown CA).
    stream = await trio.open_ssl_over_tcp_stream(
        host, port, ssl_context=ssl_context, https_compatible=True
    )
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as e:
        await trio.aclose_forcefully(stream)
        if isinstance(e.__cause__, ssl.SSLError):
            raise e.__cause__ from None
        raise ConnectionResetError("the server closed the connection in the TLS handshake") from e
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    connection = await trio_websocket.wrap_client_stream(
        nursery, stream, f"{host}:{port}", path, max_message_size=WS_MAX_MESSAGE
    )
    return WebSocketTransport(connection)
