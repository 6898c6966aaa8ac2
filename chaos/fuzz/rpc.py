"""Target ``grpc``: the public gRPC port (5002, ``raftchat.v1``) and the peer port (11110, the
node-to-node ``raftchat.peer.v1.Peer`` service); each connection goes to one of them and calls
methods of both (a port answers the other's UNIMPLEMENTED). One frame = one HTTP/2 frame
written, or one call made through grpcio.

HTTP/2 is written by hand (RFC 9113 frames, RFC 7541 HPACK literals without Huffman coding) so
that anything can be sent: gRPC calls to every method with request messages generated from the
protobuf descriptors (values at the edges, fuzz ids), mutated or random bodies, gRPC length
prefixes that lie, and HTTP/2 itself broken (frame sizes, stream ids, padding, SETTINGS values,
HPACK indexes, CONTINUATION without HEADERS, floods of PING or HEADERS+RST_STREAM). Answers are
counted by HTTP/2 frame type (GOAWAY and RST_STREAM by error code): the fuzzer does not decode
HPACK, so :mod:`chaos.fuzz.grpc_calls` makes some calls through grpcio to see gRPC statuses.

Public calls mostly carry the right bearer token (the admin token for ``Cluster``), sometimes
a wrong, damaged or no one (:func:`bearer`). Never sent: a ``Peer`` call with the real peer
token (calls carry none or a wrong one), a public method of ``DESTRUCTIVE_RPCS`` with a body its
request type can decode, or any body that decodes to a message naming a workload id or a fuzz
login user (:mod:`chaos.fuzz.safety`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Generator
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from cluster.peerauth import PeerKeys, sign
from proto.raftchat.peer.v1 import peer_pb2
from proto.raftchat.v1 import api_pb2

from .context import FuzzContext
from .http import EXTREME_INTS, http_id
from .mutate import garbage, mutate, pick
from .safety import DESTRUCTIVE_RPCS, Protected
from .scenario import Action, HalfClose, Read, Received, Reset, Scenario, Sleep, Write
from .wk import trickle

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIO_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
UNDECODABLE = b"\x0a\xff\xff\xff\xff\x0f"
"""Field 1, length-delimited, declaring ~4 GiB: a truncated message for every request type."""


@dataclass(frozen=True, slots=True)
class Method:
    path: str
    request: type[Message]
    streaming: bool
    peer: bool

    @property
    def destructive(self) -> bool:
        return self.path in DESTRUCTIVE_RPCS


@cache
def methods() -> tuple[Method, ...]:
    out = []
    for fd, peer in ((api_pb2.DESCRIPTOR, False), (peer_pb2.DESCRIPTOR, True)):
        for service in fd.services_by_name.values():
            for m in service.methods:
                cls = message_factory.GetMessageClass(m.input_type)
                path = f"/{service.full_name}/{m.name}"
                out.append(Method(path, cls, m.server_streaming, peer))
    return tuple(out)


# --- request messages ------------------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.CPPTYPE_ENUM: (-(2**31), 2**31 - 1),
}
_ID_NAMES = ("uid", "channel_id", "from_uid", "login_uid", "revoker", "subscribers", "uids")


def _scalar(f: Any, rng: random.Random, ctx: FuzzContext) -> Any:
    ct = f.cpp_type
    if ct in _INT_RANGES:
        lo, hi = _INT_RANGES[ct]
        pool = [v for v in EXTREME_INTS if lo <= v <= hi] + [0, 1, 2, 3, 7, 100]
        return rng.choice(pool)
    if ct == FieldDescriptor.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if ct in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return rng.choice((0.0, -1.0, 1e300, float("nan"), float("inf")))
    if f.type == FieldDescriptor.TYPE_BYTES:
        return rng.choice((b"", b'{"type":1,"content":"fz"}', b"\xff" * 16, rng.randbytes(40)))
    if any(n in f.name for n in _ID_NAMES) or rng.random() < 0.5:
        return ctx.api_protected.rewrite(http_id(rng, ctx))
    return rng.choice(("", "fz", "x" * 300, "\U0001f600", f"fzm-{rng.getrandbits(32):x}"))


def fill(msg: Message, rng: random.Random, ctx: FuzzContext, depth: int = 0) -> Message:
    """Set a random subset of ``msg``'s fields to edge values (nested messages to depth 3)."""
    for f in msg.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        target = getattr(msg, f.name)
        if f.message_type is not None:
            if depth >= 3:
                continue
            if f.message_type.GetOptions().map_entry:
                key_f, value_f = (
                    f.message_type.fields_by_name["key"],
                    f.message_type.fields_by_name["value"],
                )
                if value_f.message_type is not None:
                    continue
                for _ in range(rng.choice((0, 1, 3))):
                    target[_scalar(key_f, rng, ctx)] = _scalar(value_f, rng, ctx)
            elif f.is_repeated:
                for _ in range(rng.choice((0, 1, 2, 5))):
                    fill(target.add(), rng, ctx, depth + 1)
            else:
                fill(target, rng, ctx, depth + 1)
        elif f.is_repeated:
            target.extend(_scalar(f, rng, ctx) for _ in range(rng.choice((0, 1, 3, 100))))
        else:
            # A value the field type refuses (a surrogate in a string, say) is left out.
            with contextlib.suppress(ValueError, TypeError):
                setattr(msg, f.name, _scalar(f, rng, ctx))
    return msg


def _mentions(msg: Message, protected: Protected) -> bool:
    for f, value in msg.ListFields():
        values = value if f.is_repeated else [value]
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            values = [*value.keys(), *value.values()]
        for v in values:
            if isinstance(v, Message) and _mentions(v, protected):
                return True
            if isinstance(v, str) and protected.hits(v):
                return True
    return False


def safe_body(method: Method, body: bytes, ctx: FuzzContext) -> bool:
    """Whether ``body`` may go to ``method``: a Peer call (refused without the token) always;
    a destructive method only if its request type cannot decode it; anything else if what it
    decodes to names no protected id."""
    if method.peer:
        return True
    msg = method.request()
    try:
        msg.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError):
        return True
    if method.destructive:
        return False
    return not _mentions(msg, ctx.api_protected)


def request_body(method: Method, rng: random.Random, ctx: FuzzContext) -> bytes:
    """A serialized request for ``method``: generated, mutated, or random bytes; made safe."""
    kind = rng.randrange(10)
    if kind < 5:
        body = fill(method.request(), rng, ctx).SerializeToString()
    elif kind < 8:
        body = mutate(fill(method.request(), rng, ctx).SerializeToString(), rng)
    else:
        body = garbage(rng, 512)
    if not safe_body(method, body, ctx):
        body = UNDECODABLE if method.destructive else b""
    return body


# --- HTTP/2 ----------------------------------------------------------------------------------


def h2_frame(
    ftype: int, flags: int, stream: int, payload: bytes, length: int | None = None
) -> bytes:
    n = len(payload) if length is None else length
    head = (n & 0xFFFFFF).to_bytes(3, "big") + bytes([ftype & 0xFF, flags & 0xFF])
    return head + (stream & 0xFFFFFFFF).to_bytes(4, "big") + payload


def hpack_int(value: int, prefix: int, first: int = 0) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name, no Huffman coding."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def peer_credential(rng: random.Random, path: str, body: bytes, host: str) -> str:
    """A peer credential of the right shape (time, nonce, MAC, recipient) under a key that is
    not the cluster's: it gets past the format checks and must fail the MAC."""
    stranger = rng.randbytes(32)
    keys = PeerKeys(signing=stranger, keys=(stranger,))
    nonce = rng.randbytes(16)
    # The time comes from the seed too, so that a replay sends the same bytes.
    now = rng.choice((0.0, 1.7e9 + rng.random() * 1e8, 4e12))
    return sign(keys, path, body, to=host, now=now, nonce=nonce)


def bearer(ctx: FuzzContext, path: str, rng: random.Random) -> str | None:
    """The ``authorization`` metadata of a call (None: without): mostly the right token,
    sometimes not (the check is fuzzed too)."""
    admin = path.startswith("/raftchat.v1.Cluster/")
    right = ctx.admin_token if admin else ctx.api_token
    other = ctx.api_token if admin else ctx.admin_token
    if not right:
        return None
    roll = rng.randrange(20)
    if roll < 15:
        return f"Bearer {right}"
    if roll == 15:
        return None
    return rng.choice(("Bearer ", f"Bearer {right}x", f"Bearer {other}", right, "Basic x"))


def grpc_headers(ctx: FuzzContext, node: int, path: str, rng: random.Random) -> bytes:
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", f"{ctx.hosts[node]}:{ctx.grpc_port}".encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    authorization = bearer(ctx, path, rng)
    if authorization is not None:
        fields.append((b"authorization", authorization.encode()))
    token = rng.randrange(5)
    if token == 1:
        fields.append((b"x-raftchat-peer", rng.randbytes(32).hex().encode()))
    elif token == 2:
        fields.append((b"x-raftchat-peer", rng.choice((b"", b"x" * 5000, b"\x00"))))
    elif token == 3:  # well-formed, for this node, under a stranger's key
        value = peer_credential(rng, path, b"", ctx.hosts[node])
        fields.append((b"x-raftchat-peer", value.encode()))
    if rng.random() < 0.2:
        fields.append((b"grpc-timeout", rng.choice((b"1S", b"0n", b"99999999H", b"x"))))
    if rng.random() < 0.05:
        fields.append((b"grpc-encoding", rng.choice((b"gzip", b"identity", b"zz"))))
    if rng.random() < 0.05:
        rng.shuffle(fields)  # pseudo-headers after regular ones: a malformed request
    return b"".join(hpack_literal(k, v) for k, v in fields)


def grpc_message(body: bytes, rng: random.Random) -> bytes:
    declared = len(body)
    compressed = 0
    roll = rng.random()
    if roll < 0.05:
        declared = rng.choice((0xFFFFFFFF, 16 * 1024 * 1024 + 1, len(body) + 10))
    elif roll < 0.08:
        declared = max(0, len(body) - 1)
    elif roll < 0.1:
        compressed = 1
    return bytes([compressed]) + declared.to_bytes(4, "big") + body


def settings(rng: random.Random, bad: bool = False) -> bytes:
    if not bad:
        return h2_frame(SETTINGS, 0, 0, b"")
    ident = rng.choice((1, 2, 3, 4, 5, 6, 8, 0, 99))
    value = rng.choice((0, 1, 2, 16383, 16777216, 2**31, 2**32 - 1))
    return h2_frame(SETTINGS, 0, 0, ident.to_bytes(2, "big") + value.to_bytes(4, "big"))


def call_frames(ctx: FuzzContext, node: int, stream: int, rng: random.Random) -> list[bytes]:
    """HEADERS (sometimes split with CONTINUATION) and DATA of one call on ``stream``."""
    method = rng.choice(methods())
    block = grpc_headers(ctx, node, method.path, rng)
    body = request_body(method, rng, ctx)
    frames = []
    if rng.random() < 0.1 and len(block) > 2:
        cut = rng.randrange(1, len(block))
        frames.append(h2_frame(HEADERS, 0, stream, block[:cut]))
        frames.append(h2_frame(CONTINUATION, END_HEADERS, stream, block[cut:]))
    else:
        frames.append(h2_frame(HEADERS, END_HEADERS, stream, block))
    frames.append(h2_frame(DATA, END_STREAM, stream, grpc_message(body, rng)))
    return frames


def abuse_frame(rng: random.Random, stream: int) -> bytes:
    """One HTTP/2 protocol violation (RFC 9113 section 5.4: a connection or stream error)."""
    kind = rng.randrange(16)
    if kind == 0:
        return h2_frame(rng.choice((10, 11, 0xFF)), rng.randrange(256), stream, garbage(rng, 64))
    if kind == 1:
        return h2_frame(DATA, 0, 0, b"data on stream 0")
    if kind == 2:
        return h2_frame(HEADERS, END_HEADERS, stream + 1, hpack_literal(b":path", b"/"))
    if kind == 3:
        return h2_frame(DATA, 0, stream, b"x" * 20000)  # above the default max frame size
    if kind == 4:
        return h2_frame(DATA, PADDED, stream, b"\xff" + b"short")  # padding longer than frame
    if kind == 5:
        return settings(rng, bad=True)
    if kind == 6:
        return h2_frame(SETTINGS, ACK, 0, b"\x00" * 6)  # an ACK with a payload
    if kind == 7:
        return h2_frame(PING, 0, 0, b"\x00" * rng.choice((0, 7, 9)))
    if kind == 8:
        inc = rng.choice((0, 2**31 - 1))
        return h2_frame(WINDOW_UPDATE, 0, rng.choice((0, stream)), inc.to_bytes(4, "big"))
    if kind == 9:
        return h2_frame(PRIORITY, 0, stream, stream.to_bytes(4, "big") + b"\x10")  # self-dependency
    if kind == 10:
        return h2_frame(RST_STREAM, 0, rng.choice((stream, 999_999)), b"\x00\x00\x00\x08")
    if kind == 11:
        return h2_frame(CONTINUATION, END_HEADERS, stream, hpack_literal(b"x", b"y"))
    if kind == 12:
        return h2_frame(HEADERS, END_HEADERS, stream, hpack_int(2**40, 7, 0x80))  # index way out
    if kind == 13:
        return h2_frame(HEADERS, END_HEADERS, stream, b"\x00" + hpack_int(2**30, 7) + b"n")
    if kind == 14:
        return h2_frame(HEADERS, END_HEADERS, stream, hpack_int(2**31, 5, 0x20))  # table size
    return h2_frame(PUSH_PROMISE, END_HEADERS, stream, (stream + 2).to_bytes(4, "big"))


# --- scenarios -------------------------------------------------------------------------------

KINDS = (
    (55, "calls"),
    (18, "abuse"),
    (8, "flood"),
    (10, "no_preface"),
    (5, "half_open"),
    (2, "slow"),
)

Steps = Generator[Action, Received | None, None]


def make(ctx: FuzzContext, rng: random.Random) -> Scenario:
    node = rng.choice(ctx.nodes)
    kind = pick(rng, KINDS)
    port = ctx.grpc_port if rng.random() < 0.75 else ctx.peer_port
    return Scenario("grpc", kind, node, port, _KINDS[kind](rng, ctx, node), max_s=8.0)


def _opening(rng: random.Random) -> list[bytes]:
    return [PREFACE + settings(rng), h2_frame(SETTINGS, ACK, 0, b"")]


def _calls(rng: random.Random, ctx: FuzzContext, node: int) -> Steps:
    frames = _opening(rng)
    n = rng.choice((1, 3, 10, 30))
    for i in range(n):
        frames += call_frames(ctx, node, 1 + 2 * i, rng)
    if rng.random() < 0.3:
        frames.append(h2_frame(GOAWAY, 0, 0, (2 * n - 1).to_bytes(4, "big") + b"\x00" * 4))
    yield Write(b"".join(frames), len(frames))
    yield Read(0.5)
    yield Read(0.3)


def _abuse(rng: random.Random, ctx: FuzzContext, node: int) -> Steps:
    frames = _opening(rng)
    frames += call_frames(ctx, node, 1, rng)
    frames.append(abuse_frame(rng, 3))
    frames += call_frames(ctx, node, 5, rng)
    yield Write(b"".join(frames), len(frames))
    yield Read(0.3)


def _flood(rng: random.Random, ctx: FuzzContext, node: int) -> Steps:
    frames = _opening(rng)
    kind = rng.randrange(3)
    n = rng.choice((100, 500))
    if kind == 0:
        frames += [h2_frame(PING, 0, 0, rng.randbytes(8)) for _ in range(n)]
    elif kind == 1:
        # Rapid reset: open a stream and cancel it at once, many times.
        for i in range(n):
            stream = 1 + 2 * i
            method = rng.choice(methods()).path
            frames.append(
                h2_frame(HEADERS, END_HEADERS, stream, grpc_headers(ctx, node, method, rng))
            )
            frames.append(h2_frame(RST_STREAM, 0, stream, b"\x00\x00\x00\x08"))
    else:
        block = grpc_headers(ctx, node, "/raftchat.v1.Cluster/Status", rng)
        frames.append(h2_frame(HEADERS, 0, 1, block))
        frames += [
            h2_frame(CONTINUATION, 0, 1, hpack_literal(b"x-fz", b"v" * 100)) for _ in range(n)
        ]
    yield Write(b"".join(frames), len(frames))
    yield Read(0.3)


def _no_preface(rng: random.Random, ctx: FuzzContext, node: int) -> Steps:
    kind = rng.randrange(4)
    if kind == 0:
        data = garbage(rng, 1024)
    elif kind == 1:
        data = b"POST /raftchat.v1.Cluster/Status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    elif kind == 2:
        data = mutate(PREFACE + settings(rng), rng)
    else:
        data = (
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        )
    yield Write(data)
    yield Read(0.3)


def _half_open(rng: random.Random, ctx: FuzzContext, node: int) -> Steps:
    frames = _opening(rng) + call_frames(ctx, node, 1, rng)
    data = b"".join(frames)
    yield Write(data[: rng.randrange(1, len(data))], len(frames) - 1)
    if rng.random() < 0.5:
        yield HalfClose()
    yield Sleep(rng.choice((0.1, 1.0)))
    yield Read(0.2)
    if rng.random() < 0.5:
        yield Reset()


def _slow(rng: random.Random, ctx: FuzzContext, node: int) -> Steps:
    yield from trickle(b"".join(_opening(rng)), rng, max_s=3.0)
    yield Read(0.3)


_KINDS = {
    "calls": _calls,
    "abuse": _abuse,
    "flood": _flood,
    "no_preface": _no_preface,
    "half_open": _half_open,
    "slow": _slow,
}
