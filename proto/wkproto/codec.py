"""Encoding and incremental decoding of WKProto frames, with no IO (in the manner of h11).

Layout: one header byte (frame type in the high nibble, flags in the low one), an MQTT-style
base-128 remaining length (at most 4 bytes, at most 1 MiB), then the body. PING and PONG are a
single byte. Integers are big-endian; strings carry a 2-byte length. Fields that exist only in
some protocol versions are written and read according to the session's version.
"""

from __future__ import annotations

import struct

from .enums import (
    HAS_SERVER_VERSION,
    LATEST_VERSION,
    MAX_REMAINING_LENGTH,
    MAX_STRING_LENGTH,
    FrameType,
    Setting,
)
from .errors import FrameTooLarge, MalformedFrame, ProtocolError, UnknownFrameType
from .frames import (
    Connack,
    Connect,
    Disconnect,
    Event,
    Frame,
    Ping,
    Pong,
    Recv,
    Recvack,
    Send,
    Sendack,
    Sub,
    Suback,
)

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")


def _has_stream_fields(version: int, setting: int) -> bool:
    # Versions 2-4 carry stream fields in SEND/RECV when the Stream bit is set; version 5
    # moved streaming to EVENT frames and removed them again.
    return 2 <= version < 5 and bool(setting & Setting.STREAM)


def _seq_is_u64(version: int) -> bool:
    return version >= 6


class _Writer:
    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self._parts.append(_U8.pack(v))

    def u32(self, v: int) -> None:
        self._parts.append(_U32.pack(v))

    def i32(self, v: int) -> None:
        self._parts.append(_I32.pack(v))

    def i64(self, v: int) -> None:
        self._parts.append(_I64.pack(v))

    def u64(self, v: int) -> None:
        self._parts.append(_U64.pack(v))

    def seq(self, v: int, version: int) -> None:
        if _seq_is_u64(version):
            self.u64(v)
        else:
            if v > 0xFFFFFFFF:
                raise ProtocolError(f"message_seq {v} does not fit a version {version} session")
            self.u32(v)

    def string(self, s: str) -> None:
        try:
            raw = s.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate, e.g. from json.loads('"\\ud800"')
            raise ProtocolError(f"string is not encodable as UTF-8: {e.reason}") from None
        if len(raw) > MAX_STRING_LENGTH:
            raise ProtocolError(f"string of {len(raw)} bytes exceeds {MAX_STRING_LENGTH}")
        self._parts.append(_U16.pack(len(raw)))
        self._parts.append(raw)

    def rest(self, b: bytes) -> None:
        self._parts.append(b)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class _Reader:
    __slots__ = ("_buf", "_pos")

    def __init__(self, buf: bytes | memoryview) -> None:
        self._buf = bytes(buf)
        self._pos = 0

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._buf):
            raise MalformedFrame("frame body ends in the middle of a field")
        out = self._buf[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return int(_U8.unpack(self._take(1))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def i32(self) -> int:
        return int(_I32.unpack(self._take(4))[0])

    def i64(self) -> int:
        return int(_I64.unpack(self._take(8))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def seq(self, version: int) -> int:
        return self.u64() if _seq_is_u64(version) else self.u32()

    def string(self) -> str:
        n = int(_U16.unpack(self._take(2))[0])
        if n > MAX_STRING_LENGTH:
            # GoProto reads the length as signed and refuses negatives.
            raise MalformedFrame(f"string length {n} is negative as a signed 16-bit value")
        raw = self._take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedFrame(f"string is not UTF-8: {e.reason}") from None

    def rest(self) -> bytes:
        out = self._buf[self._pos :]
        self._pos = len(self._buf)
        return out

    def remaining(self) -> int:
        return len(self._buf) - self._pos


def encode_varint(n: int) -> bytes:
    if n < 0 or n > MAX_REMAINING_LENGTH:
        raise FrameTooLarge(f"remaining length {n} exceeds {MAX_REMAINING_LENGTH}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# --- encoding -------------------------------------------------------------------------------


def _body(frame: Frame, version: int) -> tuple[int, bytes]:
    """Return (header flags, body bytes) for a frame at a protocol version."""
    w = _Writer()
    flags = frame.flags & 0x0F
    match frame:
        case Connect():
            w.u8(frame.version)
            w.u8(frame.device_flag)
            w.string(frame.device_id)
            w.string(frame.uid)
            w.string(frame.token)
            w.i64(frame.client_timestamp)
            w.string(frame.client_key)
        case Connack():
            flags = 0
            if version > 3:
                flags = HAS_SERVER_VERSION
                w.u8(frame.server_version)
            w.i64(frame.time_diff)
            w.u8(frame.reason_code)
            w.string(frame.server_key)
            w.string(frame.salt)
            if version >= 4:
                w.u64(frame.node_id)
        case Send():
            w.u8(frame.setting)
            w.u32(frame.client_seq)
            w.string(frame.client_msg_no)
            if _has_stream_fields(version, frame.setting):
                w.string(frame.stream_no)
            w.string(frame.channel_id)
            w.u8(frame.channel_type)
            if version >= 3:
                w.u32(frame.expire)
            w.string(frame.msg_key)
            if frame.setting & Setting.TOPIC:
                w.string(frame.topic)
            w.rest(frame.payload)
        case Sendack():
            w.i64(frame.message_id)
            w.u32(frame.client_seq)
            w.seq(frame.message_seq, version)
            w.u8(frame.reason_code)
            if version >= 6 and frame.client_msg_no:
                w.string(frame.client_msg_no)
        case Recv():
            w.u8(frame.setting)
            w.string(frame.msg_key)
            w.string(frame.from_uid)
            w.string(frame.channel_id)
            w.u8(frame.channel_type)
            if version >= 3:
                w.u32(frame.expire)
            w.string(frame.client_msg_no)
            if _has_stream_fields(version, frame.setting):
                w.u8(frame.stream_flag)
                w.string(frame.stream_no)
                w.u64(frame.stream_id)
            w.i64(frame.message_id)
            w.seq(frame.message_seq, version)
            w.i32(frame.timestamp)
            if frame.setting & Setting.TOPIC:
                w.string(frame.topic)
            w.rest(frame.payload)
        case Recvack():
            w.i64(frame.message_id)
            w.seq(frame.message_seq, version)
        case Disconnect():
            w.u8(frame.reason_code)
            w.string(frame.reason)
        case Sub():
            w.u8(frame.setting)
            w.string(frame.sub_no)
            w.string(frame.channel_id)
            w.u8(frame.channel_type)
            w.u8(frame.action)
            w.string(frame.param)
        case Suback():
            w.string(frame.sub_no)
            w.string(frame.channel_id)
            w.u8(frame.channel_type)
            w.u8(frame.action)
            w.u8(frame.reason_code)
        case Event():
            w.string(frame.id)
            w.string(frame.type)
            w.i64(frame.timestamp)
            w.rest(frame.data)
        case _:
            raise ProtocolError(f"cannot encode {type(frame).__name__}")
    return flags, w.getvalue()


def encode(frame: Frame, version: int = LATEST_VERSION) -> bytes:
    """Encode one frame for a session of the given protocol version.

    Raises ``ProtocolError`` when a value does not fit the wire format (an over-long string, a
    u64 seq for an old session, a body above 1 MiB) and ``struct.error`` never escapes.
    """
    if isinstance(frame, (Ping, Pong)):
        return bytes([frame.frame_type << 4])
    try:
        flags, body = _body(frame, version)
    except struct.error as e:
        raise ProtocolError(f"field out of range in {type(frame).__name__}: {e}") from None
    return bytes([(frame.frame_type << 4) | flags]) + encode_varint(len(body)) + body


# --- decoding -------------------------------------------------------------------------------


def decode_body(frame_type: int, flags: int, body: bytes | memoryview, version: int) -> Frame:
    """Decode one frame body. Raises ``ProtocolError`` (and nothing else) on bad input."""
    r = _Reader(body)
    try:
        match frame_type:
            case FrameType.CONNECT:
                return Connect(
                    version=r.u8(),
                    device_flag=r.u8(),
                    device_id=r.string(),
                    uid=r.string(),
                    token=r.string(),
                    client_timestamp=r.i64(),
                    client_key=r.string(),
                    flags=flags,
                )
            case FrameType.CONNACK:
                server_version = r.u8() if flags & HAS_SERVER_VERSION else 0
                time_diff = r.i64()
                reason = r.u8()
                server_key = r.string()
                salt = r.string()
                node_id = r.u64() if r.remaining() >= 8 else 0
                return Connack(
                    time_diff=time_diff,
                    reason_code=reason,
                    server_key=server_key,
                    salt=salt,
                    node_id=node_id,
                    server_version=server_version,
                )
            case FrameType.SEND:
                setting = r.u8()
                client_seq = r.u32()
                client_msg_no = r.string()
                stream_no = r.string() if _has_stream_fields(version, setting) else ""
                channel_id = r.string()
                channel_type = r.u8()
                expire = r.u32() if version >= 3 else 0
                msg_key = r.string()
                topic = r.string() if setting & Setting.TOPIC else ""
                return Send(
                    setting=setting,
                    client_seq=client_seq,
                    client_msg_no=client_msg_no,
                    channel_id=channel_id,
                    channel_type=channel_type,
                    payload=r.rest(),
                    msg_key=msg_key,
                    expire=expire,
                    topic=topic,
                    stream_no=stream_no,
                    flags=flags,
                )
            case FrameType.SENDACK:
                message_id = r.i64()
                client_seq = r.u32()
                message_seq = r.seq(version)
                reason = r.u8()
                client_msg_no = r.string() if r.remaining() else ""
                return Sendack(
                    message_id=message_id,
                    client_seq=client_seq,
                    message_seq=message_seq,
                    reason_code=reason,
                    client_msg_no=client_msg_no,
                    flags=flags,
                )
            case FrameType.RECV:
                setting = r.u8()
                msg_key = r.string()
                from_uid = r.string()
                channel_id = r.string()
                channel_type = r.u8()
                expire = r.u32() if version >= 3 else 0
                client_msg_no = r.string()
                stream_flag, stream_no, stream_id = 0, "", 0
                if _has_stream_fields(version, setting):
                    stream_flag = r.u8()
                    stream_no = r.string()
                    stream_id = r.u64()
                message_id = r.i64()
                message_seq = r.seq(version)
                timestamp = r.i32()
                topic = r.string() if setting & Setting.TOPIC else ""
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
                    payload=r.rest(),
                    expire=expire,
                    topic=topic,
                    stream_flag=stream_flag,
                    stream_no=stream_no,
                    stream_id=stream_id,
                    flags=flags,
                )
            case FrameType.RECVACK:
                return Recvack(message_id=r.i64(), message_seq=r.seq(version), flags=flags)
            case FrameType.PING:
                return Ping()
            case FrameType.PONG:
                return Pong()
            case FrameType.DISCONNECT:
                return Disconnect(reason_code=r.u8(), reason=r.string(), flags=flags)
            case FrameType.SUB:
                return Sub(
                    setting=r.u8(),
                    sub_no=r.string(),
                    channel_id=r.string(),
                    channel_type=r.u8(),
                    action=r.u8(),
                    param=r.string(),
                    flags=flags,
                )
            case FrameType.SUBACK:
                return Suback(
                    sub_no=r.string(),
                    channel_id=r.string(),
                    channel_type=r.u8(),
                    action=r.u8(),
                    reason_code=r.u8(),
                    flags=flags,
                )
            case FrameType.EVENT:
                return Event(
                    id=r.string(), type=r.string(), timestamp=r.i64(), data=r.rest(), flags=flags
                )
            case _:
                raise UnknownFrameType(f"unknown frame type {frame_type}")
    except struct.error as e:  # pragma: no cover - _take guards lengths; kept as a safety net
        raise MalformedFrame(str(e)) from None


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, pull frames out as they complete.

    The protocol version may change between frames (it is negotiated by the first frame, CONNECT,
    whose layout does not depend on it), so frames are decoded lazily when pulled.
    """

    __slots__ = ("_buf", "max_remaining_length", "version")

    def __init__(
        self, version: int = LATEST_VERSION, max_remaining_length: int = MAX_REMAINING_LENGTH
    ) -> None:
        self.version = version
        self.max_remaining_length = max_remaining_length
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, ``None`` if more bytes are needed.

        Raises ``ProtocolError`` on bad input; the connection should then be closed, because the
        stream can no longer be framed.
        """
        buf = self._buf
        if not buf:
            return None
        first = buf[0]
        frame_type = first >> 4
        flags = first & 0x0F
        if frame_type in (FrameType.PING, FrameType.PONG):
            del buf[:1]
            return Ping() if frame_type == FrameType.PING else Pong()
        if frame_type == 0 or frame_type > FrameType.EVENT:
            raise UnknownFrameType(f"unknown frame type {frame_type}")
        length = 0
        multiplier = 1
        pos = 1
        while True:
            if pos >= len(buf):
                return None
            byte = buf[pos]
            pos += 1
            length += (byte & 0x7F) * multiplier
            if not byte & 0x80:
                break
            multiplier *= 128
            if pos > 4:
                raise MalformedFrame("remaining length uses more than 4 bytes")
        if length > self.max_remaining_length:
            raise FrameTooLarge(f"remaining length {length} exceeds {self.max_remaining_length}")
        end = pos + length
        if len(buf) < end:
            return None
        body = bytes(buf[pos:end])
        del buf[:end]
        return decode_body(frame_type, flags, body, self.version)

    def frames(self) -> list[Frame]:
        """All complete frames now buffered."""
        out: list[Frame] = []
        while (f := self.next_frame()) is not None:
            out.append(f)
        return out


def decode(data: bytes, version: int = LATEST_VERSION) -> Frame:
    """Decode exactly one complete frame; trailing or missing bytes are errors."""
    d = FrameDecoder(version)
    d.feed(data)
    frame = d.next_frame()
    if frame is None:
        raise MalformedFrame("incomplete frame")
    if d.buffered:
        raise MalformedFrame(f"{d.buffered} bytes after the frame")
    return frame
