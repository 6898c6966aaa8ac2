"""Transports under a session: raw TCP, and WebSocket messages.

TCP hands the session raw bytes (a WKProto frame may span or share reads); WebSocket hands it
whole messages, bytes for binary and str for text, and the session's codec makes sense of them
(WKProto frames may span or share messages; a JSON-RPC message is one WebSocket message).
Both take whole frames to write. WebSocket writes exactly one frame per message (the official
JS SDK 1.0.4 loses every frame after the first in a message), as text when it is a str.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio

from .websocket import WsConnection


class Transport(Protocol):
    kind: str
    peer: str
    json_rpc: bool
    """Whether a session here may speak JSON-RPC (chosen by its first message)."""

    async def receive(self) -> bytes | str:
        """What the peer sent next (never empty); ``b""`` once the peer has closed."""
        ...

    async def send_frames(self, frames: Sequence[bytes | str]) -> None: ...

    async def aclose(self) -> None: ...


def peer_of(stream: trio.SocketStream) -> str:
    """``host:port`` of the peer; ``?`` once the socket is gone (or when it has no address)."""
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return "?"


class TcpTransport:
    kind = "tcp"
    json_rpc = False

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.peer = peer_of(stream)

    async def receive(self) -> bytes:
        try:
            return await self._stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def send_frames(self, frames: Sequence[bytes | str]) -> None:
        # On TCP, frames written together cost one syscall. Only WKProto runs here: all bytes.
        await self._stream.send_all(
            b"".join(f if isinstance(f, bytes) else f.encode() for f in frames)
        )

    async def aclose(self) -> None:
        await self._stream.aclose()


class WsTransport:
    kind = "ws"
    json_rpc = True

    def __init__(self, ws: WsConnection, peer: str, kind: str = "ws") -> None:
        self._ws = ws
        self.peer = peer
        self.kind = kind  # "wss" over TLS

    async def receive(self) -> bytes | str:
        while True:
            message = await self._ws.receive()
            if message is None:
                return b""
            # An empty message is legal and must not read as the end of the connection.
            if message:
                return message

    async def send_frames(self, frames: Sequence[bytes | str]) -> None:
        for frame in frames:
            await self._ws.send_message(frame)

    async def aclose(self) -> None:
        await self._ws.aclose()
