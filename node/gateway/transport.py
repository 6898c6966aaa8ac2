"""Byte transports under a session: raw TCP, and WebSocket with binary messages.

Both hand the session raw bytes (a WKProto frame may span or share reads, or WebSocket
messages) and take whole frames to write. WebSocket writes exactly one frame per message:
the official JS SDK 1.0.4 loses every frame after the first in a message.
"""

from __future__ import annotations

from typing import Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection


class Transport(Protocol):
    kind: str
    peer: str

    async def receive(self) -> bytes:
        """Next bytes from the peer; ``b""`` once the peer has closed."""
        ...

    async def send_frames(self, frames: list[bytes]) -> None: ...

    async def aclose(self) -> None: ...


class TcpTransport:
    kind = "tcp"

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        try:
            host, port = stream.socket.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = "?"

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

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        remote = ws.remote
        self.peer = f"{getattr(remote, 'address', '?')}:{getattr(remote, 'port', '?')}"

    async def receive(self) -> bytes:
        try:
            message = await self._ws.get_message()
        except ConnectionClosed:
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
