"""WKProto input: raw frame builders that can lie about every length, field values chosen from
the edges of what the server checks, and the session scripts the TCP and WebSocket targets run.

Frames are built by hand here, not with ``proto.wkproto.encode`` (which refuses what does not fit
the wire format): a fuzzer must be able to write a string whose length prefix is wrong, a 5-byte
remaining length or a SEND whose fields disagree with its session's protocol version. The codec
is used where a frame must be right: the CONNECT of a login, a SEND's msgKey and payload
encryption, decoding what the server answers.

Script shape (:func:`session_script`): a login with a fuzz user, then a batch of frames the
server should answer and survive without closing (PING, RECVACK, SUB, SENDs that are refused
for one precise reason or, rarely, accepted), written many per write, then at most one frame
that should make the server close the session (a malformed or unexpected frame).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Protocol

from proto.wkproto import (
    Connack,
    FrameDecoder,
    FrameType,
    ProtocolError,
    Send,
    Setting,
    decode,
)
from proto.wkproto.crypto import KeyPair, SessionCipher, send_sign

from .context import FuzzContext, FuzzUser
from .mutate import garbage, mutate, pick
from .scenario import Action, Read, Received, Sleep, Write

CONNECT_VERSIONS = (0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 7, 255)
"""Protocol versions a fuzz login asks for; the server runs at min(version, 6), 0 meaning 6."""
MAX_BODY = 1 << 20
CLOCK_BASE_MS = 1_780_000_000_000
CLOCK_SPAN_MS = 365 * 86_400_000
WRITE_CHUNK = 48
"""Frames per write in a batch: many frames per syscall, and still several writes per batch
so that a session the server closes early shows up as a failed write."""


# --- raw encoding ---------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """MQTT-style base-128 length with no upper bound (5+ bytes for lengths >= 2**28)."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def s16(raw: bytes, declared: int | None = None) -> bytes:
    """A WKProto string: 2-byte big-endian length (``declared`` may lie), then the bytes."""
    n = len(raw) if declared is None else declared
    return (n & 0xFFFF).to_bytes(2, "big") + raw


def u8(v: int) -> bytes:
    return (v & 0xFF).to_bytes(1, "big")


def u32(v: int) -> bytes:
    return (v & 0xFFFFFFFF).to_bytes(4, "big")


def u64(v: int) -> bytes:
    return (v & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")


def frame(ftype: int, flags: int, body: bytes, length: bytes | None = None) -> bytes:
    """Header byte, remaining length (``length`` overrides the true one), body."""
    head = u8(((ftype & 0x0F) << 4) | (flags & 0x0F))
    return head + (varint(len(body)) if length is None else length) + body


def ping() -> bytes:
    return bytes([FrameType.PING << 4])


def connect_body(
    *,
    version: int,
    device_flag: int,
    device_id: bytes,
    uid: bytes,
    token: bytes,
    timestamp: int,
    client_key: bytes,
) -> bytes:
    return (
        u8(version)
        + u8(device_flag)
        + s16(device_id)
        + s16(uid)
        + s16(token)
        + u64(timestamp)
        + s16(client_key)
    )


@dataclass(slots=True)
class SendFields:
    setting: int
    client_seq: int
    client_msg_no: bytes
    channel_id: bytes
    channel_type: int
    payload: bytes
    msg_key: bytes = b""
    expire: int = 0
    topic: bytes = b""
    stream_no: bytes = b""
    flags: int = 0


def send_body(f: SendFields, version: int) -> bytes:
    """A SEND body laid out for a session of ``version`` (stream fields for 2-4 with the Stream
    bit, expire from 3, topic with the Topic bit), as the server decodes it."""
    out = u8(f.setting) + u32(f.client_seq) + s16(f.client_msg_no)
    if 2 <= version < 5 and f.setting & Setting.STREAM:
        out += s16(f.stream_no)
    out += s16(f.channel_id) + u8(f.channel_type)
    if version >= 3:
        out += u32(f.expire)
    out += s16(f.msg_key)
    if f.setting & Setting.TOPIC:
        out += s16(f.topic)
    return out + f.payload


# --- field values at the edges of the server's checks -----------------------------------------


def fuzz_id(rng: random.Random) -> str:
    return f"fz{rng.getrandbits(24):x}"


def edge_id(rng: random.Random, ctx: FuzzContext, *, bad_utf8: bool = False) -> bytes:
    """An id (uid or channel id) that is valid, or invalid for exactly one reason. Bytes that
    are not UTF-8 make the server close the session (the frame cannot be decoded), so they
    come only with ``bad_utf8``."""
    users = [u.uid for u in ctx.users] or ["fz0"]
    kind = pick(
        rng,
        (
            (6, "user"),
            (3, "group"),
            (3, "fresh"),
            (1, "empty"),
            (1, "long64"),
            (1, "long65"),
            (1, "huge"),
            (1, "reserved"),
            (1, "space"),
            (1, "control"),
            (1 if bad_utf8 else 0, "utf8bad"),
            (1, "unicode"),
            (2, "person"),
            (1, "cmd"),
            (1, "temp"),
        ),
    )
    match kind:
        case "user":
            return rng.choice(users).encode()
        case "group":
            return rng.choice(ctx.groups or ("fzg0",)).encode()
        case "fresh":
            return fuzz_id(rng).encode()
        case "empty":
            return b""
        case "long64":
            return b"fz" + b"x" * 62
        case "long65":
            return b"fz" + b"x" * 63
        case "huge":
            return b"fz" + b"y" * rng.choice((200, 4096, 32765))
        case "reserved":
            return f"fz{rng.choice('@#&')}{rng.getrandbits(8)}".encode()
        case "space":
            return rng.choice((b"fz a", b" fz", b"fz\t", b"fz\n", b"\xc2\xa0fz"))
        case "control":
            return rng.choice((b"fz\x00", b"\x00", b"fz\x1b[31m", "fz\u200b".encode()))
        case "utf8bad":
            return rng.choice((b"fz\xff", b"\xc3\x28", b"fz\xed\xa0\x80", b"\xf8\x88\x80\x80"))
        case "unicode":
            return rng.choice(("fz\U0001f600", "fzé", "fz\u202e", "ｆｚ")).encode()
        case "person":
            a, b = rng.choice(users), rng.choice(users)
            return rng.choice((f"{a}@{b}", f"{a}@", f"@{b}", f"{a}@{b}@{a}", "@")).encode()
        case "cmd":
            return (rng.choice(users) + "____cmd").encode()
        case _:
            return b"tmp" + rng.randbytes(12).hex().encode()


def edge_channel_type(rng: random.Random) -> int:
    return rng.choice((1, 1, 2, 2, 2, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 99, 255))


def edge_text(rng: random.Random, *, bad_utf8: bool = False) -> bytes:
    """A string field's value: empty, ordinary, at and past the length limits, odd code
    points; not UTF-8 only with ``bad_utf8`` (see :func:`edge_id`)."""
    choices = [
        b"",
        f"fzm-{rng.getrandbits(40):x}".encode(),
        b"x" * rng.choice((64, 65, 129, 1024, 64, 65, 129, 1024, 32767)),
        b"\x00",
        "\u202e\U0001f4a9".encode(),
    ]
    if bad_utf8:
        choices.append(rng.choice((b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80")))
    return rng.choice(choices)


def edge_payload(rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    if kind == 6 and rng.random() < 0.8:
        kind = 1  # large payloads cost the server time per byte: a few suffice
    if kind == 0:
        return b""
    if kind == 1:
        return b'{"type":1,"content":"fz"}'
    if kind == 2:
        return b'{"type":' + str(rng.choice((1001, 1002, -1, 0, 2**63))).encode() + b"}"
    if kind == 3:
        return b'{"type":"1","content":' + rng.choice((b"1", b"[]", b"null", b'"x"')) + b"}"
    if kind == 4:
        return b"[" * rng.choice((1, 100, 10_000))
    if kind == 5:
        return rng.randbytes(rng.choice((1, 16, 15, 17, 4096)))
    if kind == 6:
        return b"A" * rng.choice((12 * 1024, 12 * 1024 + 1, 16_000))
    if kind == 7:
        return b"=" * rng.choice((1, 3, 4))
    return garbage(rng, 512)


# --- sessions --------------------------------------------------------------------------------


@dataclass(slots=True)
class WkSession:
    uid: str
    version: int
    cipher: SessionCipher | None
    client_seq: int = 0
    sends_committed: int = 0

    def next_seq(self) -> int:
        self.client_seq += 1
        return self.client_seq


class Carrier(Protocol):
    """How WKProto bytes travel: as they are (TCP) or inside WebSocket messages."""

    def wrap(self, frames: Sequence[bytes]) -> tuple[bytes, int]:
        """The bytes to write for ``frames`` and how many target frames that is."""
        ...

    def unwrap(self, data: bytes) -> bytes:
        """WKProto bytes in what the server sent (stateful across calls)."""
        ...


class RawCarrier:
    def wrap(self, frames: Sequence[bytes]) -> tuple[bytes, int]:
        return b"".join(frames), len(frames)

    def unwrap(self, data: bytes) -> bytes:
        return data


def client_clock(rng: random.Random) -> int:
    """A client's clock in ms for CONNECT, from the scenario's randomness so that a replay sends
    the same bytes (the server only reports the difference to its own clock back)."""
    return CLOCK_BASE_MS + rng.randrange(CLOCK_SPAN_MS)


def connect_frame(user: FuzzUser, version: int, rng: random.Random) -> tuple[bytes, KeyPair]:
    """A valid CONNECT for ``user`` and the key pair it announces."""
    key = key_pair(rng)
    body = connect_body(
        version=version,
        device_flag=user.device_flag,
        device_id=b"fz-dev",
        uid=user.uid.encode(),
        token=user.token.encode(),
        timestamp=client_clock(rng),
        client_key=key.public_b64.encode(),
    )
    return frame(FrameType.CONNECT, 0, body), key


def key_pair(rng: random.Random) -> KeyPair:
    """An X25519 key pair from the scenario's randomness, so that a replay sends the same
    CONNECT (any 32 bytes make a private key)."""
    return KeyPair(rng.randbytes(32))


def login(
    carrier: Carrier,
    user: FuzzUser,
    version: int,
    rng: random.Random,
    timeout_s: float = 3.0,
) -> Generator[Action, Received | None, WkSession | None]:
    """CONNECT as ``user`` and wait for the CONNACK; the session on success, else None."""
    connect, key = connect_frame(user, version, rng)
    data, n = carrier.wrap([connect])
    yield Write(data, n)
    decoder = FrameDecoder()
    waited = 0.0
    while waited < timeout_s:
        got = yield Read(0.5)
        waited += 0.5
        assert got is not None
        decoder.feed(carrier.unwrap(got.data))
        try:
            f = decoder.next_frame()
        except ProtocolError:
            return None
        if isinstance(f, Connack):
            if f.reason_code != 1:
                return None
            cipher = None
            if f.server_key:
                try:
                    cipher = SessionCipher(key.aes_key(f.server_key), f.salt.encode())
                except Exception:
                    return None
            session_version = 6 if version == 0 else min(version, 6)
            return WkSession(user.uid, session_version, cipher)
        if got.eof:
            return None
    return None


def signed_send(s: WkSession, f: SendFields) -> bytes:
    """A SEND whose msgKey is right for its fields (encrypting ``f.payload`` first when the
    session is encrypted and the frame does not say NoEncrypt)."""
    if s.cipher is not None and not f.setting & Setting.NO_ENCRYPT:
        f.payload = s.cipher.encrypt(f.payload)
        try:
            channel = f.channel_id.decode()
            cmn = f.client_msg_no.decode()
        except UnicodeDecodeError:
            f.msg_key = b"0" * 32
        else:
            sign = send_sign(f.client_seq, cmn, channel, f.channel_type, f.payload)
            f.msg_key = s.cipher.msg_key(sign).encode()
    return frame(FrameType.SEND, f.flags, send_body(f, s.version))


def valid_send(rng: random.Random, ctx: FuzzContext, s: WkSession) -> bytes:
    """A SEND the server should accept and commit: to a fuzz group or another fuzz user."""
    others = [u.uid for u in ctx.users if u.uid != s.uid]
    if ctx.groups and (not others or rng.random() < 0.5):
        channel, ctype = rng.choice(ctx.groups), 2
    else:
        channel, ctype = rng.choice(others or [s.uid]), 1
    f = SendFields(
        setting=0,
        client_seq=s.next_seq(),
        client_msg_no=f"fz-{rng.getrandbits(48):x}".encode(),
        channel_id=channel.encode(),
        channel_type=ctype,
        payload=b'{"type":1,"content":"fuzz"}',
        flags=rng.choice((0, 2)),
    )
    s.sends_committed += 1
    return signed_send(s, f)


def edge_send(rng: random.Random, ctx: FuzzContext, s: WkSession) -> bytes:
    """A SEND with fields from the edges: a bad msgKey, or NoEncrypt / a right msgKey over
    fields that are wrong for one reason (type, id, lengths, payload convention...)."""
    setting = rng.choice(
        (0, 0, Setting.NO_ENCRYPT, Setting.NO_ENCRYPT, Setting.TOPIC, Setting.STREAM, 0x80)
    )
    if rng.random() < 0.15:
        setting = rng.randrange(256)
    f = SendFields(
        setting=setting,
        client_seq=rng.choice((s.next_seq(), 0, 0xFFFFFFFF)),
        client_msg_no=edge_text(rng),
        channel_id=edge_id(rng, ctx),
        channel_type=edge_channel_type(rng),
        payload=edge_payload(rng),
        expire=rng.choice((0, 0, 1, 86400, 0xFFFFFFFF)),
        topic=edge_text(rng) if setting & Setting.TOPIC else b"",
        stream_no=edge_text(rng) if setting & Setting.STREAM else b"",
        flags=rng.randrange(16),
    )
    f.channel_id = ctx.protected.rewrite(f.channel_id.decode("utf-8", "replace")).encode()
    mode = rng.randrange(4)
    if mode == 0 or s.cipher is None:
        f.msg_key = rng.choice((b"", b"0" * 32, rng.randbytes(16).hex().encode(), b"k" * 300))
        return frame(FrameType.SEND, f.flags, send_body(f, s.version))
    if mode == 1 and not f.setting & Setting.NO_ENCRYPT:
        # The right msgKey over a payload that is not the base64 of whole AES blocks.
        f.payload = rng.choice((b"", b"!!!!", b"QUJD", b"A" * 24 + b"=="))
        sign = send_sign(
            f.client_seq,
            f.client_msg_no.decode("utf-8", "replace"),
            f.channel_id.decode("utf-8", "replace"),
            f.channel_type,
            f.payload,
        )
        f.msg_key = s.cipher.msg_key(sign).encode()
        return frame(FrameType.SEND, f.flags, send_body(f, s.version))
    return signed_send(s, f)


def keep_open_frame(rng: random.Random, ctx: FuzzContext, s: WkSession) -> bytes:
    """One frame after login that the server answers (or ignores) without closing."""
    kind = pick(
        rng,
        ((3, "ping"), (1, "recvack"), (1, "sub"), (8, "send"), (0.2, "valid"), (0.5, "nonmin")),
    )
    if kind == "ping":
        return ping()
    if kind == "recvack":
        body = u64(rng.getrandbits(64)) + (
            u64(rng.getrandbits(64)) if s.version >= 6 else u32(rng.getrandbits(32))
        )
        return frame(FrameType.RECVACK, rng.randrange(16), body)
    if kind == "sub":
        body = (
            u8(rng.randrange(256))
            + s16(edge_text(rng))
            + s16(edge_id(rng, ctx))
            + u8(edge_channel_type(rng))
            + u8(rng.randrange(256))
            + s16(edge_text(rng))
        )
        return frame(FrameType.SUB, rng.randrange(16), body)
    if kind == "valid" and s.sends_committed < 3:
        return valid_send(rng, ctx, s)
    if kind == "nonmin":
        # A RECVACK whose remaining length is spelled in 3 bytes instead of 1: legal framing.
        body = u64(rng.getrandbits(63)) + (u64(1) if s.version >= 6 else u32(1))
        return frame(FrameType.RECVACK, 0, body, length=bytes([0x80 | len(body), 0x80, 0x00]))
    return edge_send(rng, ctx, s)


def terminal_frame(rng: random.Random, ctx: FuzzContext, s: WkSession | None) -> bytes:
    """A frame after which the server should close the session (or at least not crash)."""
    kind = pick(
        rng,
        (
            (2, "mutated"),
            (1, "unknown_type"),
            (1, "server_type"),
            (1, "second_connect"),
            (1, "disconnect"),
            (1, "truncated"),
            (1, "string_lie"),
            (1, "varint5"),
            (1, "too_large"),
            (1, "max_declared"),
            (1, "event"),
            (1, "bad_utf8"),
        ),
    )
    version = s.version if s is not None else 6
    base_send = SendFields(
        setting=Setting.NO_ENCRYPT,
        client_seq=1,
        client_msg_no=b"fzm",
        channel_id=b"fz0",
        channel_type=1,
        payload=b"x",
    )
    match kind:
        case "mutated":
            out = mutate(frame(FrameType.SEND, 0, send_body(base_send, version)), rng)
            return out if wk_send_is_safe(out, ctx, version) else ping()
        case "unknown_type":
            return frame(rng.choice((0, 13, 14, 15)), rng.randrange(16), garbage(rng, 64))
        case "server_type":
            ftype = rng.choice(
                (FrameType.CONNACK, FrameType.SENDACK, FrameType.RECV, FrameType.SUBACK)
            )
            return frame(ftype, rng.randrange(16), garbage(rng, 128))
        case "second_connect":
            user = rng.choice(ctx.users)
            return connect_frame(user, rng.choice(CONNECT_VERSIONS), rng)[0]
        case "disconnect":
            reason = s16(edge_text(rng, bad_utf8=True))
            return frame(FrameType.DISCONNECT, 0, u8(rng.randrange(256)) + reason)
        case "truncated":
            body = send_body(base_send, version)
            return frame(FrameType.SEND, 0, body[: rng.randrange(len(body))])
        case "string_lie":
            body = (
                u8(Setting.NO_ENCRYPT) + u32(1) + s16(b"fzm", rng.choice((0x7FFF, 0x8000, 0xFFFF)))
            )
            return frame(FrameType.SEND, 0, body)
        case "varint5":
            return frame(FrameType.SEND, 0, b"", length=b"\xff\xff\xff\xff\x7f")
        case "too_large":
            return frame(
                FrameType.SEND, 0, b"", length=varint(rng.choice((MAX_BODY + 1, 2**28 - 1)))
            )
        case "max_declared":
            # Declares exactly the largest body and sends only part of it: the server waits.
            return frame(FrameType.SEND, 0, rng.randbytes(64), length=varint(MAX_BODY))
        case "event":
            body = s16(edge_text(rng, bad_utf8=True)) + s16(edge_text(rng))
            body += u64(rng.getrandbits(64))
            return frame(FrameType.EVENT, 0, body + garbage(rng, 64))
        case _:
            f = SendFields(
                setting=Setting.NO_ENCRYPT,
                client_seq=1,
                client_msg_no=b"\xc3\x28",
                channel_id=b"fz\xff",
                channel_type=1,
                payload=b"x",
            )
            return frame(FrameType.SEND, 0, send_body(f, version))


def wk_send_is_safe(data: bytes, ctx: FuzzContext, version: int) -> bool:
    """False when ``data`` decodes to a SEND naming a protected channel (a byte mutation can
    turn one id into another)."""
    if not ctx.protected.ids:
        return True
    try:
        f = decode(data, version)
    except ProtocolError:
        return True
    return not (isinstance(f, Send) and ctx.protected.hits(f.channel_id))


def pre_connect_garbage(rng: random.Random, ctx: FuzzContext) -> list[bytes]:
    """What arrives before (instead of) a CONNECT: a frame of another type, a mutated or
    malformed CONNECT, an HTTP or TLS hello, random bytes."""
    kind = pick(
        rng,
        (
            (3, "bad_connect"),
            (2, "mutated_connect"),
            (1, "ping_first"),
            (1, "send_first"),
            (1, "http"),
            (1, "tls"),
            (2, "random"),
            (1, "terminal"),
        ),
    )
    if kind == "bad_connect":
        return [bad_connect(rng, ctx)]
    if kind == "mutated_connect":
        user = rng.choice(ctx.users)
        good, _ = connect_frame(user, rng.choice(CONNECT_VERSIONS), rng)
        return [mutate(good, rng)]
    if kind == "ping_first":
        return [ping()] * rng.choice((1, 2, 50))
    if kind == "send_first":
        f = SendFields(Setting.NO_ENCRYPT, 1, b"fzm", b"fz0", 1, b"hi")
        return [frame(FrameType.SEND, 0, send_body(f, 6))]
    if kind == "http":
        return [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]
    if kind == "tls":
        return [b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + rng.randbytes(64)]
    if kind == "terminal":
        return [terminal_frame(rng, ctx, None)]
    return [garbage(rng, 1024)]


def bad_connect(rng: random.Random, ctx: FuzzContext) -> bytes:
    """A well-framed CONNECT wrong in one field: uid, token, device flag, client key, version,
    timestamp, or a body that ends early."""
    user = rng.choice(ctx.users)
    fields: dict[str, object] = {
        "version": rng.choice(CONNECT_VERSIONS),
        "device_flag": user.device_flag,
        "device_id": b"fz-dev",
        "uid": user.uid.encode(),
        "token": user.token.encode(),
        "timestamp": client_clock(rng),
        "client_key": key_pair(rng).public_b64.encode(),
    }
    which = rng.choice(
        ("uid", "token", "device_flag", "client_key", "version", "timestamp", "device_id")
    )
    if which == "uid":
        uid = edge_id(rng, ctx, bad_utf8=True)
        fields["uid"] = ctx.protected.rewrite(uid.decode("utf-8", "replace")).encode()
    elif which == "token":
        fields["token"] = rng.choice((b"", b"wrong", user.token.encode() + b"x", b"t" * 32767))
    elif which == "device_flag":
        fields["device_flag"] = rng.choice((3, 4, 255))
    elif which == "client_key":
        fields["client_key"] = rng.choice(
            (b"", b"not base64!", b"AAAA", b"A" * 44, b"QUJD" * 11, rng.randbytes(44))
        )
    elif which == "version":
        fields["version"] = rng.randrange(256)
    elif which == "timestamp":
        fields["timestamp"] = rng.choice((0, -1, 2**63 - 1, -(2**63)))
    else:
        fields["device_id"] = edge_text(rng, bad_utf8=True)
    body = connect_body(**fields)  # type: ignore[arg-type]
    if rng.random() < 0.15:
        body = body[: rng.randrange(len(body))]
    return frame(FrameType.CONNECT, rng.randrange(16) if rng.random() < 0.1 else 0, body)


# --- scripts ---------------------------------------------------------------------------------

Batch = Callable[[random.Random, FuzzContext, WkSession], list[bytes]]


def batch_frames(rng: random.Random, ctx: FuzzContext, s: WkSession, n: int) -> list[bytes]:
    return [keep_open_frame(rng, ctx, s) for _ in range(n)]


def write_frames(carrier: Carrier, frames: Sequence[bytes]) -> Generator[Action, object, None]:
    for i in range(0, len(frames), WRITE_CHUNK):
        data, n = carrier.wrap(frames[i : i + WRITE_CHUNK])
        yield Write(data, n)


def session_script(
    rng: random.Random, ctx: FuzzContext, carrier: Carrier, *, batch_max: int = 300
) -> Generator[Action, Received | None, WkSession | None]:
    """Login, a batch of frames the session should survive, maybe a terminal frame. Returns
    the session (None when the login failed) so that a caller can go on with it."""
    user = rng.choice(ctx.users)
    s = yield from login(carrier, user, rng.choice(CONNECT_VERSIONS), rng)
    if s is None:
        return None
    n = rng.choice((1, 10, 50, rng.randint(1, batch_max), batch_max))
    yield from write_frames(carrier, batch_frames(rng, ctx, s, n))
    if rng.random() < 0.5:
        data, frames = carrier.wrap([terminal_frame(rng, ctx, s)])
        yield Write(data, frames)
    yield Read(0.2)
    return s


def trickle(data: bytes, rng: random.Random, max_s: float) -> Generator[Action, object, None]:
    """Write ``data`` a few bytes at a time with pauses (slowloris), within ``max_s``; it counts
    as one frame, with its first bytes."""
    spent = 0.0
    i = 0
    while i < len(data) and spent < max_s:
        step = rng.choice((1, 1, 2, 3))
        yield Write(data[i : i + step], 1 if i == 0 else 0)
        i += step
        pause = rng.choice((0.01, 0.05, 0.2, 0.5))
        spent += pause
        yield Sleep(pause)
