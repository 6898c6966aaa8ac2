"""Fuzzing the WKProto decoder: whatever the bytes, ``FrameDecoder.next_frame()`` returns a frame
or ``None``, or raises ``ProtocolError`` -- never any other exception -- plus explicit checks of
each refusal path of the framing layer."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto.wkproto import (
    MAX_REMAINING_LENGTH,
    Disconnect,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    MalformedFrame,
    ProtocolError,
    Recvack,
    UnknownFrameType,
    decode,
    encode,
    encode_varint,
)
from tests.unit.test_wkproto_roundtrip import frames_at, normalize

VERSIONS = range(1, 7)
VERSION = st.integers(1, 6)

FUZZ = settings(
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Outcome:
    frames: list[Frame]
    error: type[ProtocolError] | None
    buffered: int


def run_decoder(chunks: list[bytes], version: int) -> Outcome:
    """Feed ``chunks`` one by one, pulling frames after each, until a ``ProtocolError``.

    Any other exception escapes and fails the calling test.
    """
    decoder = FrameDecoder(version)
    frames: list[Frame] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (frame := decoder.next_frame()) is not None:
                frames.append(frame)
    except ProtocolError as e:
        return Outcome(frames, type(e), decoder.buffered)
    return Outcome(frames, None, decoder.buffered)


def check_decoded_frames_reencode(outcome: Outcome, version: int) -> None:
    """Whatever the decoder accepts, the encoder can write back, and it reads the same again."""
    for frame in outcome.frames:
        expected = normalize(frame, version)
        assert decode(encode(frame, version), version) == expected


def fuzz(data: bytes, version: int) -> Outcome:
    outcome = run_decoder([data], version)
    check_decoded_frames_reencode(outcome, version)
    return outcome


# --- strategies -----------------------------------------------------------------------------

FRAME_TYPES = st.integers(1, 12)


@st.composite
def string_fields(draw: st.DrawFn, noisy: bool = True) -> bytes:
    """Something shaped like a WKProto string; when ``noisy``, sometimes with a wrong length or
    bytes that are not UTF-8."""
    utf8 = not noisy or draw(st.integers(0, 3)) > 0
    raw = draw(st.text(max_size=12).map(str.encode) if utf8 else st.binary(max_size=12))
    consistent = not noisy or draw(st.integers(0, 7)) > 0
    length = len(raw) if consistent else draw(st.integers(0, 0xFFFF))
    return length.to_bytes(2, "big") + raw


# u8, u32, i64/u64 fields
INT_FIELDS = st.one_of([st.binary(min_size=n, max_size=n) for n in (1, 4, 8)])

# Body layouts of section 1.5 in a compact notation: 1/4/8 = integer of that many bytes,
# q = message_seq (4 or 8 bytes), s = string, * = rest of the frame, ? = present or not
# (fields that depend on the version or the setting byte).
LAYOUTS = {
    1: "1 1 s s s 8 s",
    2: "?1 8 1 s s ?8",
    3: "1 4 s ?s s 1 ?4 s ?s *",
    4: "8 4 q 1 ?s",
    5: "1 s s s 1 ?4 s ?1 ?s ?8 8 q 4 ?s *",
    6: "8 q",
    9: "1 s",
    10: "1 s s 1 1 s",
    11: "s s 1 1 1",
    12: "s s 8 *",
}


NOISY_STRING, CLEAN_STRING = string_fields(noisy=True), string_fields(noisy=False)
SEQ_WIDTH = st.sampled_from([4, 8])
FIXED_WIDTH = {n: st.binary(min_size=n, max_size=n) for n in (1, 4, 8)}
REST = st.binary(max_size=16)


@st.composite
def layout_bodies(draw: st.DrawFn, frame_type: int) -> bytes:
    """A body following the layout of ``frame_type`` for some version, with random values."""
    strings = NOISY_STRING if draw(st.booleans()) else CLEAN_STRING
    out = b""
    for token in LAYOUTS[frame_type].split():
        if token.startswith("?"):
            if not draw(st.booleans()):
                continue
            token = token[1:]
        if token == "s":
            out += draw(strings)
        elif token == "*":
            out += draw(REST)
        else:
            out += draw(FIXED_WIDTH[draw(SEQ_WIDTH) if token == "q" else int(token)])
    return out


LAYOUT_BODIES = {frame_type: layout_bodies(frame_type) for frame_type in LAYOUTS}
FIELD_SOUP = st.lists(st.one_of(INT_FIELDS, NOISY_STRING), max_size=12).map(b"".join)


@st.composite
def headed_frames(draw: st.DrawFn) -> bytes:
    """A valid header byte and varint, then a body that may or may not match the layout."""
    frame_type = draw(FRAME_TYPES)
    header = bytes([frame_type << 4 | draw(st.integers(0, 15))])
    if frame_type in (7, 8):  # PING, PONG: one byte
        return header
    # Mostly a body shaped like the type's layout, sometimes a soup of fields.
    body = draw(LAYOUT_BODIES[frame_type] if draw(st.integers(0, 3)) else FIELD_SOUP)
    # Mostly the exact body length, so the body decoder is exercised; sometimes a length that
    # is too short or too long, or a few stray bytes after the body.
    if draw(st.integers(0, 7)) == 0:
        length = draw(st.integers(0, len(body) + 8))
    else:
        length = len(body)
        body += draw(st.binary(max_size=2)) if draw(st.integers(0, 7)) == 0 else b""
    return header + encode_varint(length) + body


@st.composite
def mutated_encodings(draw: st.DrawFn, version: int) -> bytes:
    frames = draw(st.lists(frames_at(version), min_size=1, max_size=3))
    data = bytearray(b"".join(encode(f, version) for f in frames))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "set":
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


# --- properties -----------------------------------------------------------------------------


@settings(FUZZ, max_examples=1000)
@given(st.binary(max_size=300), VERSION)
def test_arbitrary_bytes(data: bytes, version: int) -> None:
    fuzz(data, version)


@settings(FUZZ, max_examples=1500)
@given(st.lists(headed_frames(), min_size=1, max_size=3).map(b"".join), VERSION)
def test_valid_headers_with_arbitrary_bodies(data: bytes, version: int) -> None:
    fuzz(data, version)


@settings(FUZZ, max_examples=2000)
@given(st.data(), VERSION)
def test_mutated_valid_encodings(data: st.DataObject, version: int) -> None:
    wire = data.draw(mutated_encodings(version), label="wire")
    whole = fuzz(wire, version)
    # The outcome must not depend on how the bytes were split up on arrival.
    cut = data.draw(st.integers(0, len(wire)), label="cut")
    split = run_decoder([wire[:cut], wire[cut:]], version)
    assert split.frames == whole.frames
    assert split.error == whole.error
    if whole.error is None:
        assert split.buffered == whole.buffered


@settings(FUZZ, max_examples=300)
@given(st.data(), VERSION, VERSION)
def test_frames_read_at_the_wrong_version(data: st.DataObject, wrote: int, read: int) -> None:
    # A peer that disagrees about the version produces well-framed but misread bodies.
    frames = data.draw(st.lists(frames_at(wrote), min_size=1, max_size=3))
    fuzz(b"".join(encode(f, wrote) for f in frames), read)


# --- explicit refusals ----------------------------------------------------------------------


def test_errors_share_one_base_class() -> None:
    for error in (MalformedFrame, FrameTooLarge, UnknownFrameType):
        assert issubclass(error, ProtocolError)


@pytest.mark.parametrize("header", [0x30, 0x50, 0xC0])
def test_remaining_length_over_one_mebibyte_refused_from_the_header_alone(header: int) -> None:
    decoder = FrameDecoder(5)
    # 1 048 577 = 0x100001 -> 81 80 40
    decoder.feed(bytes([header]) + bytes.fromhex("81 80 40"))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_largest_four_byte_remaining_length_refused() -> None:
    decoder = FrameDecoder(5)
    decoder.feed(bytes.fromhex("30 ff ff ff 7f"))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_remaining_length_of_exactly_one_mebibyte_waits_for_the_body() -> None:
    decoder = FrameDecoder(5)
    decoder.feed(b"\x30" + encode_varint(MAX_REMAINING_LENGTH))
    assert decoder.next_frame() is None
    assert decoder.buffered == 4


def test_remaining_length_cap_is_configurable() -> None:
    decoder = FrameDecoder(5, max_remaining_length=16)
    decoder.feed(b"\x90\x11")
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()
    decoder = FrameDecoder(5, max_remaining_length=16)
    decoder.feed(encode(Disconnect(reason_code=1, reason="x" * 13)))  # 16-byte body
    assert decoder.next_frame() == Disconnect(reason_code=1, reason="x" * 13)


@pytest.mark.parametrize("varint", ["80 80 80 80", "ff ff ff ff 01", "80 80 80 80 00"])
def test_five_byte_varint_is_malformed(varint: str) -> None:
    decoder = FrameDecoder(5, max_remaining_length=2**40)
    decoder.feed(b"\x30" + bytes.fromhex(varint))
    with pytest.raises(MalformedFrame):
        decoder.next_frame()


def test_four_byte_varint_is_accepted() -> None:
    decoder = FrameDecoder(5, max_remaining_length=2**28)
    decoder.feed(bytes.fromhex("30 80 80 80 01"))  # 2**21, a legal four-byte length
    assert decoder.next_frame() is None


def test_non_minimal_varint_is_read_by_value() -> None:
    # 80 0c is 12 written on two bytes; GoProto reads it by value, so do we.
    wire = encode(Recvack(message_id=1, message_seq=2), 5)
    assert wire[1] == 0x0C
    assert decode(wire[:1] + b"\x8c\x00" + wire[2:], 5) == Recvack(message_id=1, message_seq=2)


@pytest.mark.parametrize("frame_type", [0, 13, 14, 15])
@pytest.mark.parametrize("flags", [0x0, 0x5, 0xF])
def test_unknown_frame_types(frame_type: int, flags: int) -> None:
    decoder = FrameDecoder(5)
    decoder.feed(bytes([frame_type << 4 | flags]))  # refused from the first byte alone
    with pytest.raises(UnknownFrameType):
        decoder.next_frame()
    with pytest.raises(UnknownFrameType):
        decode(bytes([frame_type << 4 | flags]) + bytes.fromhex("03 0c 00 00"))


def test_unknown_frame_type_after_a_good_frame() -> None:
    decoder = FrameDecoder(5)
    decoder.feed(b"\x70\xd0")
    assert decoder.next_frame() is not None
    with pytest.raises(UnknownFrameType):
        decoder.next_frame()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff\xfe", id="invalid-bytes"),
        pytest.param(b"\xc0\xaf", id="overlong"),
        pytest.param(b"\xed\xa0\x80", id="surrogate"),
        pytest.param(b"\xe4\xbd", id="truncated-sequence"),
        pytest.param(b"ok\x80", id="stray-continuation"),
    ],
)
def test_invalid_utf8_in_a_string_is_malformed(raw: bytes) -> None:
    body = b"\x0c" + len(raw).to_bytes(2, "big") + raw  # DISCONNECT: reason_code, reason
    with pytest.raises(MalformedFrame):
        decode(b"\x90" + encode_varint(len(body)) + body, 5)


def test_string_length_with_the_sign_bit_is_malformed() -> None:
    # GoProto reads string lengths as int16 and refuses negatives -- even when the body does
    # hold that many bytes.
    body = b"\x0c\x80\x00" + b"a" * 0x8000
    with pytest.raises(MalformedFrame):
        decode(b"\x90" + encode_varint(len(body)) + body, 5)


@pytest.mark.parametrize("cut", [0, 1, 4, 11])
def test_body_shorter_than_its_layout_is_malformed(cut: int) -> None:
    body = encode(Recvack(message_id=1, message_seq=2), 5)[2:][:cut]
    with pytest.raises(MalformedFrame):
        decode(b"\x60" + encode_varint(len(body)) + body, 5)


def test_string_longer_than_the_body_is_malformed() -> None:
    with pytest.raises(MalformedFrame):
        decode(bytes.fromhex("90 05 0c 00 09 61 62"), 5)


SAMPLES = [
    pytest.param(Disconnect(reason_code=12, reason="login in other device"), 5, id="disconnect"),
    pytest.param(Recvack(message_id=123_456_789, message_seq=7, flags=3), 6, id="recvack"),
    pytest.param(Disconnect(reason_code=1, reason="z" * 300), 2, id="two-byte-varint"),
]


@pytest.mark.parametrize(("frame", "version"), SAMPLES)
def test_frame_cut_short_waits_until_complete(frame: Frame, version: int) -> None:
    wire = encode(frame, version)
    for cut in range(len(wire)):
        decoder = FrameDecoder(version)
        decoder.feed(wire[:cut])
        assert decoder.next_frame() is None
        assert decoder.buffered == cut  # nothing consumed while waiting
        assert decoder.next_frame() is None  # asking again changes nothing
        decoder.feed(wire[cut:])
        assert decoder.next_frame() == frame
        assert decoder.buffered == 0


def test_decode_refuses_incomplete_and_trailing_bytes() -> None:
    wire = encode(Recvack(message_id=1, message_seq=2), 5)
    with pytest.raises(MalformedFrame):
        decode(wire[:-1], 5)
    with pytest.raises(MalformedFrame):
        decode(wire + b"\x70", 5)
    with pytest.raises(MalformedFrame):
        decode(b"", 5)


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_input_is_just_waiting(version: int) -> None:
    decoder = FrameDecoder(version)
    assert decoder.next_frame() is None
    decoder.feed(b"")
    assert decoder.next_frame() is None
    assert decoder.frames() == []
