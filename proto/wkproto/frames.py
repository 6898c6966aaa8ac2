"""WKProto frames as plain data. Which fields reach the wire depends on the protocol version;
see ``codec.py`` and ``docs/protocol.md``. Integer fields stay plain ints so that a decoder never
fails on an enum value it does not know."""

from __future__ import annotations

from dataclasses import dataclass, field

from .enums import FrameType


@dataclass(slots=True)
class Connect:
    version: int
    device_flag: int
    device_id: str
    uid: str
    token: str
    client_timestamp: int
    client_key: str
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.CONNECT, init=False, repr=False)


@dataclass(slots=True)
class Connack:
    time_diff: int
    reason_code: int
    server_key: str = ""
    salt: str = ""
    node_id: int = 0
    server_version: int = 0
    """Written (with the HasServerVersion header bit) only to sessions above version 3."""
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.CONNACK, init=False, repr=False)


@dataclass(slots=True)
class Send:
    setting: int
    client_seq: int
    client_msg_no: str
    channel_id: str
    channel_type: int
    payload: bytes
    msg_key: str = ""
    expire: int = 0
    topic: str = ""
    stream_no: str = ""
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.SEND, init=False, repr=False)


@dataclass(slots=True)
class Sendack:
    message_id: int
    client_seq: int
    message_seq: int
    reason_code: int
    client_msg_no: str = ""
    """Trailing field of version-6 sessions; older clients stop reading before it."""
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.SENDACK, init=False, repr=False)


@dataclass(slots=True)
class Recv:
    setting: int
    msg_key: str
    from_uid: str
    channel_id: str
    channel_type: int
    client_msg_no: str
    message_id: int
    message_seq: int
    timestamp: int
    payload: bytes
    expire: int = 0
    topic: str = ""
    stream_flag: int = 0
    stream_no: str = ""
    stream_id: int = 0
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.RECV, init=False, repr=False)


@dataclass(slots=True)
class Recvack:
    message_id: int
    message_seq: int
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.RECVACK, init=False, repr=False)


@dataclass(slots=True)
class Ping:
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.PING, init=False, repr=False)


@dataclass(slots=True)
class Pong:
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.PONG, init=False, repr=False)


@dataclass(slots=True)
class Disconnect:
    reason_code: int
    reason: str = ""
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.DISCONNECT, init=False, repr=False)


@dataclass(slots=True)
class Sub:
    setting: int
    sub_no: str
    channel_id: str
    channel_type: int
    action: int
    param: str = ""
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.SUB, init=False, repr=False)


@dataclass(slots=True)
class Suback:
    sub_no: str
    channel_id: str
    channel_type: int
    action: int
    reason_code: int
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.SUBACK, init=False, repr=False)


@dataclass(slots=True)
class Event:
    id: str
    type: str
    timestamp: int
    data: bytes
    flags: int = 0
    frame_type: FrameType = field(default=FrameType.EVENT, init=False, repr=False)


Frame = (
    Connect
    | Connack
    | Send
    | Sendack
    | Recv
    | Recvack
    | Ping
    | Pong
    | Disconnect
    | Sub
    | Suback
    | Event
)
