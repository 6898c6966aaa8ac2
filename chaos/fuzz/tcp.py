"""Target ``tcp``: WKProto on the gateway's TCP port (5100). One frame = one WKProto frame (or
one chunk of pre-CONNECT garbage).

Scenario kinds, by weight: ``session`` (login, a batch of up to 300 frames the session should
survive, maybe one frame that should close it), ``pre_connect`` (garbage, another frame type,
an HTTP or TLS hello before any CONNECT), ``bad_connect`` (a CONNECT wrong in one field, then
frames anyway), ``half_open`` (a frame that declares more than is sent, then our side shut or
held), ``reset`` (a batch cut by a TCP RST), ``big_frame`` (exactly the largest body, 1 MiB),
``slowloris`` (a CONNECT or a frame a few bytes at a time) and ``auth_timeout`` (nothing, or
PINGs, until around the server's auth timeout).
"""

from __future__ import annotations

import random
from collections.abc import Generator

from proto.wkproto import FrameType, Setting

from .context import FuzzContext
from .mutate import pick
from .scenario import Action, HalfClose, Read, Received, Reset, Scenario, Sleep, Write
from .wk import (
    CONNECT_VERSIONS,
    MAX_BODY,
    RawCarrier,
    SendFields,
    bad_connect,
    batch_frames,
    connect_frame,
    frame,
    login,
    ping,
    pre_connect_garbage,
    send_body,
    session_script,
    trickle,
    varint,
    write_frames,
)

KINDS = (
    (60, "session"),
    (10, "pre_connect"),
    (8, "bad_connect"),
    (5, "half_open"),
    (4, "reset"),
    (2, "big_frame"),
    (2, "slowloris"),
    (1, "auth_timeout"),
)


def make(ctx: FuzzContext, rng: random.Random) -> Scenario:
    node = rng.choice(ctx.nodes)
    kind = pick(rng, KINDS)
    steps = _KINDS[kind](rng, ctx)
    max_s = 12.0 if kind in ("slowloris", "auth_timeout", "half_open") else 8.0
    return Scenario("tcp", kind, node, ctx.tcp_port, steps, max_s=max_s)


Steps = Generator[Action, Received | None, None]


def _session(rng: random.Random, ctx: FuzzContext) -> Steps:
    yield from session_script(rng, ctx, RawCarrier())


def _pre_connect(rng: random.Random, ctx: FuzzContext) -> Steps:
    frames = pre_connect_garbage(rng, ctx)
    yield Write(b"".join(frames), len(frames))
    yield Read(0.2)


def _bad_connect(rng: random.Random, ctx: FuzzContext) -> Steps:
    yield Write(bad_connect(rng, ctx))
    if rng.random() < 0.5:
        yield Write(ping() * 10, 10)  # after a refused CONNECT, while the server closes
    yield Read(0.3)


def _half_open(rng: random.Random, ctx: FuzzContext) -> Steps:
    carrier = RawCarrier()
    if rng.random() < 0.6:
        s = yield from login(carrier, rng.choice(ctx.users), rng.choice(CONNECT_VERSIONS), rng)
        if s is not None:
            yield from write_frames(carrier, batch_frames(rng, ctx, s, rng.randint(1, 20)))
    declared = rng.choice((5, 100, 4096, MAX_BODY))
    yield Write(frame(FrameType.SEND, 0, rng.randbytes(rng.randint(0, 4)), length=varint(declared)))
    if rng.random() < 0.5:
        yield HalfClose()
    yield Sleep(rng.choice((0.2, 1.0, 3.0)))
    yield Read(0.2)
    if rng.random() < 0.5:
        yield Reset()


def _reset(rng: random.Random, ctx: FuzzContext) -> Steps:
    carrier = RawCarrier()
    s = yield from login(carrier, rng.choice(ctx.users), rng.choice(CONNECT_VERSIONS), rng)
    if s is not None:
        frames = batch_frames(rng, ctx, s, rng.randint(1, 200))
        yield from write_frames(carrier, frames)
    yield Reset()


def _big_frame(rng: random.Random, ctx: FuzzContext) -> Steps:
    carrier = RawCarrier()
    s = yield from login(carrier, rng.choice(ctx.users), 6, rng)
    if s is None:
        return
    group = (ctx.groups or ("fzg0",))[0].encode()
    f = SendFields(Setting.NO_ENCRYPT, s.next_seq(), b"fz-big", group, 2, b"")
    head = send_body(f, s.version)
    f.payload = rng.randbytes(16) * ((MAX_BODY - len(head)) // 16)
    f.payload += b"x" * (MAX_BODY - len(head) - len(f.payload))
    yield Write(frame(FrameType.SEND, 0, send_body(f, s.version)))
    yield Write(ping())
    yield Read(0.5)


def _slowloris(rng: random.Random, ctx: FuzzContext) -> Steps:
    user = rng.choice(ctx.users)
    yield from trickle(connect_frame(user, 6, rng)[0], rng, max_s=3.0)
    yield Read(0.3)


def _auth_timeout(rng: random.Random, ctx: FuzzContext) -> Steps:
    wait = ctx.auth_timeout_s + rng.uniform(-0.5, 0.5)
    waited = 0.0
    while waited < wait:
        if rng.random() < 0.5:
            yield Write(ping())
        step = rng.choice((0.1, 0.3, 0.5))
        yield Sleep(step)
        waited += step
    yield Write(ping() * 5, 5)
    yield Read(0.3)


_KINDS = {
    "session": _session,
    "pre_connect": _pre_connect,
    "bad_connect": _bad_connect,
    "half_open": _half_open,
    "reset": _reset,
    "big_frame": _big_frame,
    "slowloris": _slowloris,
    "auth_timeout": _auth_timeout,
}
