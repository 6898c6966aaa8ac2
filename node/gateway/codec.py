"""The wire protocol under a session: WKProto, or JSON-RPC on WebSocket.

A session works on WKProto frame objects whatever its client speaks; a codec turns what the
transport receives into frames and the session's frames into what it sends. On the WebSocket
port the first message chooses, as in WuKongIM's ``wsmux``: JSON-RPC when its first
non-whitespace character is ``{`` or ``[``, WKProto otherwise; the choice holds for the
session. TCP serves WKProto only.
"""

from __future__ import annotations

from typing import Protocol

from proto.jsonrpc import Answer, JsonRpcCodec, starts_json
from proto.wkproto import LATEST_VERSION, Frame, FrameDecoder, encode


class SessionCodec(Protocol):
    name: str
    encrypts: bool
    """Whether the session may encrypt payloads (``gateway.encryption``) on this protocol."""
    version: int
    """The session's protocol version, set once CONNECT has negotiated it."""

    def feed(self, data: bytes | str) -> None: ...

    def next_frame(self) -> Frame | Answer | None:
        """The next frame, an answer to refused input, or ``None`` until more is fed. Raises
        ``ProtocolError`` for input after which the connection cannot go on."""
        ...

    def encode(self, frame: Frame) -> bytes | str | None:
        """What to send for ``frame`` (str: a text message), or ``None`` for nothing."""
        ...


class WkprotoCodec:
    name = "wkproto"
    encrypts = True

    def __init__(self) -> None:
        self._decoder = FrameDecoder(LATEST_VERSION)

    @property
    def version(self) -> int:
        return self._decoder.version

    @version.setter
    def version(self, value: int) -> None:
        self._decoder.version = value

    def feed(self, data: bytes | str) -> None:
        # A text message is not WKProto; its bytes let the decoder refuse it precisely.
        self._decoder.feed(data.encode() if isinstance(data, str) else data)

    def next_frame(self) -> Frame | None:
        return self._decoder.next_frame()

    def encode(self, frame: Frame) -> bytes:
        return encode(frame, self.version)


def choose_codec(first: bytes | str, json_rpc: bool) -> SessionCodec | None:
    """The codec for a connection whose first received data is ``first``; ``None`` while a
    WebSocket has sent only whitespace (the choice waits for a character that decides)."""
    if not json_rpc:
        return WkprotoCodec()
    is_json = starts_json(first)
    if is_json is None:
        return None
    return JsonRpcCodec() if is_json else WkprotoCodec()
