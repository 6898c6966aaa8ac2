"""Property-based round trips of every WKProto frame type at every protocol version 1..6.

The strategies here follow the field tables of the protocol reference (section 1.5), not the
codec: with ``exact=True`` they only produce values that the given version can carry, so
``decode(encode(f, v), v) == f`` must hold; with ``exact=False`` they also fill the fields the
version drops, and ``normalize`` states what must survive. ``test_wkproto_fuzz`` reuses them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from itertools import accumulate, pairwise

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from proto.wkproto import (
    Connack,
    Connect,
    Disconnect,
    Event,
    Frame,
    FrameDecoder,
    Ping,
    Pong,
    Recv,
    Recvack,
    Send,
    Sendack,
    Sub,
    Suback,
    decode,
    encode,
)

VERSIONS = range(1, 7)

STREAM = 0x02  # Setting.STREAM
TOPIC = 0x08  # Setting.TOPIC


def _uint(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, 2**bits - 1)


def _sint(bits: int) -> st.SearchStrategy[int]:
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


U8, U32, U64 = _uint(8), _uint(32), _uint(64)
I32, I64 = _sint(32), _sint(64)
# Arbitrary unicode (hypothesis' default alphabet has no surrogates): 300 characters are at
# most 1 200 UTF-8 bytes, well within the 32 767-byte string limit.
TEXT = st.text(max_size=300)
PAYLOAD = st.binary(max_size=400)


def carries_stream(version: int, setting: int) -> bool:
    """Stream fields exist in SEND/RECV for 2 <= v < 5 with the Stream bit (section 1.4)."""
    return 2 <= version < 5 and bool(setting & STREAM)


NIBBLE = st.integers(0, 0x0F)


def seq_strategy(version: int) -> st.SearchStrategy[int]:
    return U64 if version >= 6 else U32


def flags_strategy(exact: bool) -> st.SearchStrategy[int]:
    # Only the low nibble of the header carries flags.
    return NIBBLE if exact else U8


FrameStrategy = Callable[[int, bool], st.SearchStrategy[Frame]]


@st.composite
def connect_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Connect:
    return Connect(
        version=draw(U8),
        device_flag=draw(U8),
        device_id=draw(TEXT),
        uid=draw(TEXT),
        token=draw(TEXT),
        client_timestamp=draw(I64),
        client_key=draw(TEXT),
        flags=draw(flags_strategy(exact)),
    )


@st.composite
def connack_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Connack:
    carried = version >= 4 or not exact  # server_version and node_id
    return Connack(
        time_diff=draw(I64),
        reason_code=draw(U8),
        server_key=draw(TEXT),
        salt=draw(TEXT),
        node_id=draw(U64) if carried else 0,
        server_version=draw(U8) if carried else 0,
        # The CONNACK header nibble belongs to the codec (HasServerVersion).
        flags=0 if exact else draw(U8),
    )


@st.composite
def send_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Send:
    setting = draw(U8)
    return Send(
        setting=setting,
        client_seq=draw(U32),
        client_msg_no=draw(TEXT),
        channel_id=draw(TEXT),
        channel_type=draw(U8),
        payload=draw(PAYLOAD),
        msg_key=draw(TEXT),
        expire=draw(U32) if version >= 3 or not exact else 0,
        topic=draw(TEXT) if setting & TOPIC or not exact else "",
        stream_no=draw(TEXT) if carries_stream(version, setting) or not exact else "",
        flags=draw(flags_strategy(exact)),
    )


@st.composite
def sendack_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Sendack:
    return Sendack(
        message_id=draw(I64),
        client_seq=draw(U32),
        message_seq=draw(seq_strategy(version)),
        reason_code=draw(U8),
        client_msg_no=draw(TEXT) if version >= 6 or not exact else "",
        flags=draw(flags_strategy(exact)),
    )


@st.composite
def recv_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Recv:
    setting = draw(U8)
    stream = carries_stream(version, setting) or not exact
    return Recv(
        setting=setting,
        msg_key=draw(TEXT),
        from_uid=draw(TEXT),
        channel_id=draw(TEXT),
        channel_type=draw(U8),
        client_msg_no=draw(TEXT),
        message_id=draw(I64),
        message_seq=draw(seq_strategy(version)),
        timestamp=draw(I32),
        payload=draw(PAYLOAD),
        expire=draw(U32) if version >= 3 or not exact else 0,
        topic=draw(TEXT) if setting & TOPIC or not exact else "",
        stream_flag=draw(U8) if stream else 0,
        stream_no=draw(TEXT) if stream else "",
        stream_id=draw(U64) if stream else 0,
        flags=draw(flags_strategy(exact)),
    )


@st.composite
def recvack_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Recvack:
    return Recvack(
        message_id=draw(I64),
        message_seq=draw(seq_strategy(version)),
        flags=draw(flags_strategy(exact)),
    )


@st.composite
def ping_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Ping:
    # PING is the single byte 0x70: no flags on the wire.
    return Ping(flags=0 if exact else draw(U8))


@st.composite
def pong_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Pong:
    return Pong(flags=0 if exact else draw(U8))


@st.composite
def disconnect_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Disconnect:
    return Disconnect(reason_code=draw(U8), reason=draw(TEXT), flags=draw(flags_strategy(exact)))


@st.composite
def sub_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Sub:
    return Sub(
        setting=draw(U8),
        sub_no=draw(TEXT),
        channel_id=draw(TEXT),
        channel_type=draw(U8),
        action=draw(U8),
        param=draw(TEXT),
        flags=draw(flags_strategy(exact)),
    )


@st.composite
def suback_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Suback:
    return Suback(
        sub_no=draw(TEXT),
        channel_id=draw(TEXT),
        channel_type=draw(U8),
        action=draw(U8),
        reason_code=draw(U8),
        flags=draw(flags_strategy(exact)),
    )


@st.composite
def event_frames(draw: st.DrawFn, version: int, exact: bool = True) -> Event:
    return Event(
        id=draw(TEXT),
        type=draw(TEXT),
        timestamp=draw(I64),
        data=draw(PAYLOAD),
        flags=draw(flags_strategy(exact)),
    )


FRAME_STRATEGIES: dict[str, FrameStrategy] = {
    "connect": connect_frames,
    "connack": connack_frames,
    "send": send_frames,
    "sendack": sendack_frames,
    "recv": recv_frames,
    "recvack": recvack_frames,
    "ping": ping_frames,
    "pong": pong_frames,
    "disconnect": disconnect_frames,
    "sub": sub_frames,
    "suback": suback_frames,
    "event": event_frames,
}


@functools.cache  # building and validating strategies is costly; they are immutable
def frame_strategy(kind: str, version: int, exact: bool = True) -> st.SearchStrategy[Frame]:
    return FRAME_STRATEGIES[kind](version, exact)


@functools.cache
def frames_at(version: int, exact: bool = True) -> st.SearchStrategy[Frame]:
    """Any frame type, with values a session of ``version`` can carry (when ``exact``)."""
    return st.one_of([frame_strategy(kind, version, exact) for kind in FRAME_STRATEGIES])


def normalize(frame: Frame, version: int) -> Frame:
    """What a frame looks like after a trip over the wire at ``version`` (section 1.5)."""
    r = dataclasses.replace
    match frame:
        case Ping() | Pong():
            return r(frame, flags=0)
        case Connack():
            if version < 4:
                return r(frame, flags=0, server_version=0, node_id=0)
            return r(frame, flags=0)
        case Send():
            stream = carries_stream(version, frame.setting)
            return r(
                frame,
                flags=frame.flags & 0x0F,
                expire=frame.expire if version >= 3 else 0,
                topic=frame.topic if frame.setting & TOPIC else "",
                stream_no=frame.stream_no if stream else "",
            )
        case Recv():
            stream = carries_stream(version, frame.setting)
            return r(
                frame,
                flags=frame.flags & 0x0F,
                expire=frame.expire if version >= 3 else 0,
                topic=frame.topic if frame.setting & TOPIC else "",
                stream_flag=frame.stream_flag if stream else 0,
                stream_no=frame.stream_no if stream else "",
                stream_id=frame.stream_id if stream else 0,
            )
        case Sendack():
            return r(
                frame,
                flags=frame.flags & 0x0F,
                client_msg_no=frame.client_msg_no if version >= 6 else "",
            )
        case _:
            return r(frame, flags=frame.flags & 0x0F)


def drain(decoder: FrameDecoder) -> list[Frame]:
    out: list[Frame] = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


KIND_VERSION = [
    pytest.param(kind, version, id=f"{kind}-v{version}")
    for kind in FRAME_STRATEGIES
    for version in VERSIONS
]


# --- single frames --------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "version"), KIND_VERSION)
@settings(derandomize=True, deadline=None, max_examples=60)
@given(data=st.data())
def test_round_trip(kind: str, version: int, data: st.DataObject) -> None:
    frame = data.draw(frame_strategy(kind, version), label="frame")
    wire = encode(frame, version)
    assert decode(wire, version) == frame
    assert wire[0] >> 4 == frame.frame_type


@pytest.mark.parametrize("version", VERSIONS)
@settings(derandomize=True, deadline=None, max_examples=300)
@given(data=st.data())
def test_fields_a_version_lacks_are_dropped_and_nothing_else(
    version: int, data: st.DataObject
) -> None:
    frame = data.draw(frames_at(version, exact=False), label="frame")
    assert decode(encode(frame, version), version) == normalize(frame, version)


def test_strategies_reach_version_specific_fields() -> None:
    # Guards against strategies that never fill a field the version carries.
    find(send_frames(2), lambda f: f.stream_no != "" and f.topic != "")
    find(recv_frames(4), lambda f: f.stream_id != 0 and f.expire != 0 and f.topic != "")
    find(connack_frames(4), lambda f: f.node_id != 0 and f.server_version != 0)
    find(sendack_frames(6), lambda f: f.client_msg_no != "" and f.message_seq >= 2**32)
    find(recvack_frames(6), lambda f: f.message_seq >= 2**32)


# --- streams of frames ----------------------------------------------------------------------


@st.composite
def framed_streams(draw: st.DrawFn, version: int) -> tuple[list[Frame], list[bytes]]:
    frames = draw(st.lists(frames_at(version), max_size=8), label="frames")
    stream = b"".join(encode(f, version) for f in frames)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    chunks = [stream[a:b] for a, b in pairwise([0, *cuts, len(stream)])]
    return frames, chunks


@pytest.mark.parametrize("version", VERSIONS)
@settings(derandomize=True, deadline=None, max_examples=150)
@given(data=st.data())
def test_incremental_decoding_any_chunking(version: int, data: st.DataObject) -> None:
    frames, chunks = data.draw(framed_streams(version))
    decoder = FrameDecoder(version)
    out: list[Frame] = []
    for chunk in chunks:
        decoder.feed(chunk)
        out.extend(drain(decoder))
    assert out == frames
    assert decoder.buffered == 0
    assert decoder.next_frame() is None


@pytest.mark.parametrize("version", VERSIONS)
@settings(derandomize=True, deadline=None, max_examples=30)
@given(data=st.data())
def test_incremental_decoding_byte_by_byte(version: int, data: st.DataObject) -> None:
    frames = data.draw(st.lists(frames_at(version), min_size=1, max_size=4))
    wires = [encode(f, version) for f in frames]
    ends = list(accumulate(len(w) for w in wires))
    stream = b"".join(wires)
    decoder = FrameDecoder(version)
    out: list[Frame] = []
    for fed in range(1, len(stream) + 1):
        decoder.feed(stream[fed - 1 : fed])
        out.extend(drain(decoder))
        # A frame comes out exactly when its last byte arrives, never earlier or later.
        complete = sum(1 for end in ends if end <= fed)
        assert len(out) == complete
        assert decoder.buffered == fed - (ends[complete - 1] if complete else 0)
    assert out == frames
    assert decoder.buffered == 0


@pytest.mark.parametrize("version", VERSIONS)
@settings(derandomize=True, deadline=None, max_examples=40)
@given(data=st.data())
def test_version_switch_after_connect(version: int, data: st.DataObject) -> None:
    # The session version is negotiated by CONNECT, whose layout does not depend on it; bytes
    # that follow in the same read must be decoded at the negotiated version.
    connect = data.draw(connect_frames(version))
    frames = data.draw(st.lists(frames_at(version), max_size=5))
    decoder = FrameDecoder()
    decoder.feed(encode(connect, version) + b"".join(encode(f, version) for f in frames))
    assert decoder.next_frame() == connect
    decoder.version = version
    assert drain(decoder) == frames
    assert decoder.buffered == 0
