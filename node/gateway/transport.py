"""Byte transports under a session: raw TCP, and WebSocket with binary messages.

Both hand the session raw bytes (a WKProto frame may span or share reads, or WebSocket
messages) and take whole frames to write. WebSocket writes exactly one frame per message:
the official JS SDK 1.0.4 loses every frame after the first in a message.
"""

from __future__ import annotations

from typing import Protocol

import trio

from .websocket import WsConnection


class Transport(Protocol):
    kind: str
    peer: str

    async def receive(self) -> bytes:
        """Next bytes from the peer; ``b""`` once the peer has closed."""
        ...

    async def send_frames(self, frames: list[bytes]) -> None: ...

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

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.peer = peer_of(stream)

    async def receive(self) -> bytes:
        try:
            return await self._stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def send_frames(self, frames: list[bytes]) -> None:
        # On TCP, frames written together cost one syscall.
        await self._stream.send_all(b"".join(frames))

    async def aclose(self) -> None:
        await self._stream.aclose()


class WsTransport:
    kind = "ws"

    def __init__(self, ws: WsConnection, peer: str) -> None:
        self._ws = ws
        self.peer = peer

    async def receive(self) -> bytes:
        message = await self._ws.receive()
        if message is None:
            return b""
        if isinstance(message, str):
            # JSON-RPC over text messages is not served; treat it as bytes so that the codec
            # rejects it precisely instead of the transport guessing.
            return message.encode()
        return bytes(message)

    async def send_frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self._ws.send_message(frame)

    async def aclose(self) -> None:
        await self._ws.aclose()
