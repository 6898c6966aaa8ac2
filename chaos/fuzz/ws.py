"""Target ``ws``: WKProto inside WebSocket messages on the gateway's WebSocket port (5200), and
abuse of the WebSocket protocol itself. One frame = one WebSocket frame written (data,
continuation or control), plus one per bad upgrade request.

WebSocket frames are built by hand (RFC 6455 section 5.2) so that anything can be sent: unmasked
client frames, reserved bits and opcodes, control frames over 125 bytes or fragmented, lengths in
a longer form than needed or with the top bit set, CLOSE frames with codes the RFC forbids.

Scenario kinds: ``session`` (the TCP target's session script, each WKProto frame in its own
binary message, or several in one, or one split over several, or fragmented, with PINGs and
unsolicited PONGs between; then a WebSocket-level ending), ``close_race`` (make the server close
the connection, then keep sending PINGs, PONGs, data and CLOSE frames while it does),
``violation`` (one protocol violation, then more frames), ``bad_upgrade`` (a handshake the
server must refuse), ``slow`` (a trickled handshake or frame) and ``auth_timeout`` (PINGs until
past the server's auth timeout).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from proto.wkproto import FrameType

from .context import FuzzContext
from .mutate import garbage, mutate, pick
from .scenario import Action, HalfClose, Read, Received, Reset, Scenario, Sleep, Write
from .wk import (
    CONNECT_VERSIONS,
    MAX_BODY,
    bad_connect,
    batch_frames,
    frame,
    login,
    ping,
    session_script,
    terminal_frame,
    trickle,
    u8,
    varint,
    write_frames,
)

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
BAD_CLOSE_CODES = (0, 1, 999, 1004, 1005, 1006, 1012, 1015, 1016, 2999, 5000, 65535)
GOOD_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999)
MAX_MESSAGE = MAX_BODY + 16
"""The server's ``max_message_size`` (docs/protocol.md): one full-size WKProto frame."""


# --- frames ----------------------------------------------------------------------------------


def apply_mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def ws_frame(
    opcode: int,
    payload: bytes,
    rng: random.Random,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    form: int | None = None,
) -> bytes:
    """A client frame. ``length`` overrides the payload length written in the header; ``form``
    forces the 7-bit (0), 16-bit (126) or 64-bit (127) length form."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    if form is None:
        form = 0 if n < 126 else 126 if n < 65536 else 127
    mask_bit = 0x80 if masked else 0
    if form == 0:
        head = bytes([b0, mask_bit | (n & 0x7F)])
    elif form == 126:
        head = bytes([b0, mask_bit | 126]) + (n & 0xFFFF).to_bytes(2, "big")
    else:
        head = bytes([b0, mask_bit | 127]) + (n & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
    if not masked:
        return head + payload
    key = rng.randbytes(4)
    return head + key + apply_mask(payload, key)


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else code.to_bytes(2, "big") + reason


@dataclass(slots=True)
class WsReader:
    """Parses what the server sends after the handshake: frames (never masked by a server)."""

    buf: bytearray = field(default_factory=bytearray)
    close_codes: list[int] = field(default_factory=list)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out: list[tuple[int, bytes]] = []
        while True:
            parsed = self._one()
            if parsed is None:
                return out
            out.append(parsed)
            if parsed[0] == CLOSE:
                payload = parsed[1]
                self.close_codes.append(int.from_bytes(payload[:2], "big") if payload else 1005)

    def _one(self) -> tuple[int, bytes] | None:
        b = self.buf
        if len(b) < 2:
            return None
        opcode = b[0] & 0x0F
        n = b[1] & 0x7F
        pos = 2
        if n == 126:
            if len(b) < 4:
                return None
            n, pos = int.from_bytes(b[2:4], "big"), 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, pos = int.from_bytes(b[2:10], "big"), 10
        if b[1] & 0x80:
            pos += 4  # a server must not mask; tolerate it rather than desynchronise
        if len(b) < pos + n:
            return None
        payload = bytes(b[pos : pos + n])
        del b[: pos + n]
        return opcode, payload


# --- the handshake ---------------------------------------------------------------------------


def upgrade_request(host: str, port: int, rng: random.Random, extra: bytes = b"") -> bytes:
    key = base64.b64encode(rng.randbytes(16))
    return (
        b"GET / HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


def bad_upgrade_request(host: str, port: int, rng: random.Random) -> bytes:
    """A handshake wrong in one way (or mutated)."""
    good = upgrade_request(host, port, rng)
    kind = rng.randrange(12)
    if kind == 0:
        return good.replace(b"Sec-WebSocket-Key: ", b"X-Key: ")
    if kind == 1:
        return good.replace(b"Version: 13", b"Version: " + rng.choice((b"12", b"", b"99999")))
    if kind == 2:
        return good.replace(
            b"GET /", rng.choice((b"POST /", b"GET http://x/", b"GET *", b"G\0T /"))
        )
    if kind == 3:
        return good.replace(b"HTTP/1.1", rng.choice((b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9")))
    if kind == 4:
        return good.replace(b"Upgrade: websocket", b"Upgrade: h2c")
    if kind == 5:
        big = b"X-Fz: " + b"a" * rng.choice((8000, 70_000)) + b"\r\n"
        return upgrade_request(host, port, rng, extra=big)
    if kind == 6:
        return upgrade_request(
            host,
            port,
            rng,
            extra=b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=99; x\r\n"
            b"Sec-WebSocket-Protocol: a, , b,\r\n",
        )
    if kind == 7:
        key = base64.b64encode(rng.randbytes(rng.choice((0, 15, 17))))
        return good.replace(good.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0], key)
    if kind == 8:
        return good.replace(b"\r\n", b"\n")
    if kind == 9:
        return good[: rng.randrange(len(good))]
    if kind == 10:
        return good.replace(b"Host: ", b"Host: \x00\xff")
    return mutate(good, rng)


def handshake(
    host: str, port: int, rng: random.Random
) -> Generator[Action, Received | None, bytes | None]:
    """Upgrade; on a 101 the bytes that followed the response head, else None."""
    yield Write(upgrade_request(host, port, rng), 1)
    buf = b""
    for _ in range(10):
        got = yield Read(0.3)
        assert got is not None
        buf += got.data
        if b"\r\n\r\n" in buf:
            head, _, rest = buf.partition(b"\r\n\r\n")
            return rest if head.startswith(b"HTTP/1.1 101") else None
        if got.eof:
            return None
    return None


# --- carrying WKProto ------------------------------------------------------------------------


class WsCarrier:
    """WKProto frames in binary messages, shaped by a per-connection style."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.style = pick(
            rng,
            ((10, "one"), (2, "coalesce"), (1, "split"), (2, "fragment"), (2, "noise")),
        )
        self.reader = WsReader()

    def _message(self, payload: bytes) -> list[bytes]:
        rng = self.rng
        if self.style == "fragment" and len(payload) > 1:
            cut = rng.randrange(1, len(payload))
            parts = [ws_frame(BINARY, payload[:cut], rng, fin=False)]
            if rng.random() < 0.5:
                parts.append(ws_frame(PING, rng.randbytes(rng.randrange(126)), rng))
            parts.append(ws_frame(CONT, payload[cut:], rng))
            return parts
        out = [ws_frame(BINARY, payload, rng)]
        if self.style == "noise" and rng.random() < 0.3:
            op = rng.choice((PING, PONG))
            out.append(ws_frame(op, rng.randbytes(rng.randrange(126)), rng))
        return out

    def wrap(self, frames: Sequence[bytes]) -> tuple[bytes, int]:
        out: list[bytes] = []
        if self.style == "coalesce":
            out += self._message(b"".join(frames))
        elif self.style == "split":
            data = b"".join(frames)
            cut = self.rng.randrange(len(data) + 1)
            out += self._message(data[:cut]) if cut else []
            out += self._message(data[cut:]) if cut < len(data) else []
        else:
            for f in frames:
                out += self._message(f)
        return b"".join(out), len(out)

    def unwrap(self, data: bytes) -> bytes:
        return b"".join(p for op, p in self.reader.feed(data) if op in (BINARY, CONT))


# --- scenarios -------------------------------------------------------------------------------

KINDS = (
    (40, "session"),
    (18, "close_race"),
    (14, "violation"),
    (12, "bad_upgrade"),
    (3, "slow"),
    (2, "auth_timeout"),
)

Steps = Generator[Action, Received | None, None]


def make(ctx: FuzzContext, rng: random.Random) -> Scenario:
    node = rng.choice(ctx.nodes)
    host = ctx.hosts[node]
    kind = pick(rng, KINDS)
    steps = _KINDS[kind](rng, ctx, host, ctx.ws_port)
    max_s = 12.0 if kind in ("slow", "auth_timeout") else 8.0
    return Scenario("ws", kind, node, ctx.ws_port, steps, max_s=max_s)


def control_noise(rng: random.Random) -> bytes:
    """One frame for while the server closes: PING, PONG, CLOSE, data."""
    kind = rng.choice((PING, PING, PING, PONG, CLOSE, BINARY, TEXT))
    if kind == CLOSE:
        return ws_frame(CLOSE, close_payload(rng.choice(GOOD_CLOSE_CODES + BAD_CLOSE_CODES)), rng)
    if kind in (BINARY, TEXT):
        return ws_frame(kind, ping(), rng)
    return ws_frame(kind, rng.randbytes(rng.choice((0, 4, 125))), rng)


def after_close(rng: random.Random) -> Steps:
    """Keep sending frames, a few ms apart, while the server closes the connection."""
    for _ in range(rng.choice((3, 10, 30))):
        yield Write(control_noise(rng))
        yield Sleep(rng.choice((0.005, 0.02, 0.05)))
    yield Read(0.2)


def violation_frame(rng: random.Random) -> bytes:
    kind = rng.randrange(15)
    if kind == 0:
        return ws_frame(BINARY, ping(), rng, masked=False)
    if kind == 1:
        return ws_frame(BINARY, ping(), rng, rsv=rng.choice((1, 2, 4, 7)))
    if kind == 2:
        return ws_frame(rng.choice((3, 4, 5, 6, 7, 0xB, 0xC, 0xF)), garbage(rng, 64), rng)
    if kind == 3:
        return ws_frame(rng.choice((PING, PONG, CLOSE)), b"\x03\xe8" + b"p" * 200, rng)
    if kind == 4:
        return ws_frame(PING, b"frag", rng, fin=False)
    if kind == 5:
        return ws_frame(CONT, ping(), rng)
    if kind == 6:
        return ws_frame(BINARY, b"a", rng, fin=False) + ws_frame(TEXT, b"b", rng)
    if kind == 7:
        return ws_frame(BINARY, b"", rng, length=1 << 63, form=127)
    if kind == 8:
        return ws_frame(BINARY, b"", rng, length=MAX_MESSAGE + 1, form=127)
    if kind == 9:
        return ws_frame(TEXT, b"\xff\xfe\xc3\x28", rng)
    if kind == 10:
        return ws_frame(CLOSE, b"\x03", rng)
    if kind == 11:
        return ws_frame(CLOSE, close_payload(rng.choice(BAD_CLOSE_CODES)), rng)
    if kind == 12:
        return ws_frame(CLOSE, close_payload(1000, b"\xff\xc0 bad utf-8"), rng)
    if kind == 13:
        return ws_frame(BINARY, ping(), rng, form=127)  # a 1-byte length in the 64-bit form
    return mutate(ws_frame(BINARY, ping(), rng), rng)


def _session(rng: random.Random, ctx: FuzzContext, host: str, port: int) -> Steps:
    rest = yield from handshake(host, port, rng)
    if rest is None:
        return
    carrier = WsCarrier(rng)
    carrier.unwrap(rest)
    yield from session_script(rng, ctx, carrier)
    ending = rng.randrange(6)
    if ending == 0:
        yield Write(ws_frame(CLOSE, close_payload(1000, b"bye"), rng))
        yield Read(0.3)
    elif ending == 1:
        yield Write(violation_frame(rng))
        yield from after_close(rng)
    elif ending == 2:
        yield from after_close(rng)
    elif ending == 3:
        yield Reset()


def _close_race(rng: random.Random, ctx: FuzzContext, host: str, port: int) -> Steps:
    """What makes the server close first, then PINGs (and more) while it closes."""
    rest = yield from handshake(host, port, rng)
    if rest is None:
        return
    carrier = WsCarrier(rng)
    carrier.unwrap(rest)
    cause = rng.randrange(6)
    if cause == 0:
        # A CONNECT declaring an absurd remaining length: refused before any CONNACK.
        absurd = frame(FrameType.CONNECT, 0, b"", length=varint(rng.choice((2**21, 2**28 - 1))))
        yield Write(ws_frame(BINARY, absurd, rng))
    elif cause == 1:
        yield Write(ws_frame(BINARY, bad_connect(rng, ctx), rng))
    elif cause == 2:
        s = yield from login(carrier, rng.choice(ctx.users), rng.choice(CONNECT_VERSIONS), rng)
        if s is not None:
            yield from write_frames(carrier, batch_frames(rng, ctx, s, rng.randint(0, 20)))
            frames = [
                frame(FrameType.DISCONNECT, 0, u8(0) + b"\x00\x00"),
                terminal_frame(rng, ctx, s),
            ]
            data, n = carrier.wrap([rng.choice(frames)])
            yield Write(data, n)
    elif cause == 3:
        yield Write(violation_frame(rng))
    elif cause == 4:
        yield Write(ws_frame(CLOSE, close_payload(rng.choice(GOOD_CLOSE_CODES)), rng))
    else:
        yield Write(ws_frame(TEXT, b'{"jsonrpc":"2.0","method":"connect"}', rng))
    yield Sleep(rng.choice((0.0, 0.001, 0.01, 0.05)))
    yield from after_close(rng)
    if rng.random() < 0.3:
        yield HalfClose()
        yield Read(0.3)


def _violation(rng: random.Random, ctx: FuzzContext, host: str, port: int) -> Steps:
    rest = yield from handshake(host, port, rng)
    if rest is None:
        return
    if rng.random() < 0.5:
        carrier = WsCarrier(rng)
        carrier.unwrap(rest)
        s = yield from login(carrier, rng.choice(ctx.users), rng.choice(CONNECT_VERSIONS), rng)
        if s is not None:
            yield from write_frames(carrier, batch_frames(rng, ctx, s, rng.randint(1, 30)))
    yield Write(violation_frame(rng))
    yield Write(ws_frame(PING, b"after", rng))
    yield Read(0.3)


def _bad_upgrade(rng: random.Random, ctx: FuzzContext, host: str, port: int) -> Steps:
    request = bad_upgrade_request(host, port, rng)
    if rng.random() < 0.3:
        # Frames pipelined right behind the request, before any 101.
        request += ws_frame(BINARY, ping(), rng) + ws_frame(PING, b"", rng)
        yield Write(request, 3)
    else:
        yield Write(request, 1)
    yield Read(0.3)


def _slow(rng: random.Random, ctx: FuzzContext, host: str, port: int) -> Steps:
    if rng.random() < 0.5:
        yield from trickle(upgrade_request(host, port, rng), rng, max_s=3.0)
        yield Read(0.3)
        return
    rest = yield from handshake(host, port, rng)
    if rest is None:
        return
    yield from trickle(ws_frame(BINARY, ping() * 20, rng), rng, max_s=3.0)
    yield Read(0.3)


def _auth_timeout(rng: random.Random, ctx: FuzzContext, host: str, port: int) -> Steps:
    rest = yield from handshake(host, port, rng)
    if rest is None:
        return
    end = ctx.auth_timeout_s + rng.uniform(-0.3, 0.8)
    waited = 0.0
    while waited < end:
        yield Write(ws_frame(rng.choice((PING, PONG)), b"", rng))
        step = rng.choice((0.05, 0.1, 0.25))
        yield Sleep(step)
        waited += step
    yield from after_close(rng)


_KINDS = {
    "session": _session,
    "close_race": _close_race,
    "violation": _violation,
    "bad_upgrade": _bad_upgrade,
    "slow": _slow,
    "auth_timeout": _auth_timeout,
}
