"""Golden byte vectors for the WKProto codec.

The vectors of section 1.10 of the protocol reference are checked in both directions; the
version-dependent layouts of sections 1.3-1.6 are checked with vectors derived by hand from the
field tables (each one annotated field by field), so that they do not merely echo the codec.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from proto.wkproto import (
    Connack,
    Connect,
    Disconnect,
    Event,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    HeaderFlag,
    MalformedFrame,
    Ping,
    Pong,
    ProtocolError,
    ReasonCode,
    Recv,
    Recvack,
    Send,
    Sendack,
    Setting,
    decode,
    encode,
    encode_varint,
)

ALL_VERSIONS = range(1, 7)

MESSAGE_ID = 123_456_789  # 00 00 00 00 07 5b cd 15
RECV_TS = 1_700_000_000  # 65 53 f1 00


def h(text: str) -> bytes:
    """Hex with free spacing and ``|`` separators, as in the reference document."""
    return bytes.fromhex(text.replace("|", " "))


def assert_both_ways(frame: Frame, version: int, wire: bytes) -> None:
    assert encode(frame, version) == wire
    assert decode(wire, version) == frame


# --- remaining-length varints (section 1.3 / 1.10) -----------------------------------------

VARINTS = [
    (5, "05"),
    (127, "7f"),
    (128, "80 01"),
    (300, "ac 02"),
    (1241, "d9 09"),
    (16_383, "ff 7f"),
    (16_384, "80 80 01"),
]


@pytest.mark.parametrize(("n", "wire"), VARINTS)
def test_varint_vectors(n: int, wire: str) -> None:
    assert encode_varint(n) == h(wire)


@pytest.mark.parametrize(("n", "wire"), VARINTS)
def test_varint_vectors_through_a_frame(n: int, wire: str) -> None:
    # A DISCONNECT body is reason_code (1) + string length (2) + the reason text, so a reason
    # of n - 3 characters gives a remaining length of exactly n.
    reason = "x" * (n - 3)
    frame = Disconnect(reason_code=ReasonCode.CONNECT_KICK, reason=reason)
    body = bytes([12]) + (n - 3).to_bytes(2, "big") + reason.encode()
    assert_both_ways(frame, 5, b"\x90" + h(wire) + body)


def test_varint_zero_is_one_zero_byte() -> None:
    # The Go encoder writes no length byte for 0; the reference asks for 0x00 instead.
    assert encode_varint(0) == b"\x00"


def test_zero_remaining_length_is_read_as_an_empty_body() -> None:
    # No layout has an empty body, so the empty body is then refused as malformed -- but the
    # decoder must have read the 0 length rather than waiting for more bytes.
    dec = FrameDecoder(5)
    dec.feed(b"\x60\x00")
    with pytest.raises(MalformedFrame):
        dec.next_frame()


def test_varint_largest_allowed_value_and_beyond() -> None:
    assert encode_varint(1 << 20) == h("80 80 40")
    with pytest.raises(FrameTooLarge):
        encode_varint((1 << 20) + 1)
    with pytest.raises(FrameTooLarge):
        encode_varint(-1)


# --- the section 1.10 frame vectors ---------------------------------------------------------

CONNECT_V5 = h(
    "10 18 | 05 | 00 | 00 02 64 31 | 00 02 75 31 | 00 02 74 31 | 00 00 01 8b cf e5 68 00 | 00 00"
)
CONNACK_V5 = h(
    "21 16 | 05 | ff ff ff ff ff ff ff f1 | 01 | 00 00 | 00 00 | 00 00 00 00 00 00 03 e9"
)
SEND_V5 = h(
    "32 16 | 00 | 00 00 00 01 | 00 02 6d 31 | 00 02 75 32 | 01 | 00 00 00 00 | 00 00 | 68 69"
)
SENDACK_V5 = h("42 11 00 00 00 00 07 5b cd 15 00 00 00 01 00 00 00 07 01")
SENDACK_V6 = h("40 15 00 00 00 00 07 5b cd 15 00 00 00 01 00 00 00 00 00 00 00 07 01")
RECV_V5 = h(
    "52 26 | 00 | 00 00 | 00 02 75 31 | 00 02 75 31 | 01 | 00 00 00 00 | 00 02 6d 31 |"
    "00 00 00 00 07 5b cd 15 | 00 00 00 07 | 65 53 f1 00 | 68 69"
)
RECVACK_V5 = h("60 0c 00 00 00 00 07 5b cd 15 00 00 00 07")
RECVACK_V6 = h("60 10 00 00 00 00 07 5b cd 15 00 00 00 00 00 00 00 07")
DISCONNECT_KICK = h("90 18 0c 00 15") + b"login in other device"

CONNECT_FRAME = Connect(
    version=5,
    device_flag=0,
    device_id="d1",
    uid="u1",
    token="t1",
    client_timestamp=1_700_000_000_000,
    client_key="",
)
CONNACK_FRAME = Connack(
    time_diff=-15, reason_code=ReasonCode.SUCCESS, node_id=1001, server_version=5
)
SEND_FRAME = Send(
    setting=0,
    client_seq=1,
    client_msg_no="m1",
    channel_id="u2",
    channel_type=1,
    payload=b"hi",
    flags=HeaderFlag.RED_DOT,
)
RECV_FRAME = Recv(
    setting=0,
    msg_key="",
    from_uid="u1",
    channel_id="u1",
    channel_type=1,
    client_msg_no="m1",
    message_id=MESSAGE_ID,
    message_seq=7,
    timestamp=RECV_TS,
    payload=b"hi",
    flags=HeaderFlag.RED_DOT,
)

GOLDEN = [
    pytest.param(CONNECT_FRAME, 5, CONNECT_V5, id="connect-v5"),
    pytest.param(CONNACK_FRAME, 5, CONNACK_V5, id="connack-v5"),
    pytest.param(SEND_FRAME, 5, SEND_V5, id="send-v5-reddot"),
    pytest.param(
        Sendack(
            message_id=MESSAGE_ID,
            client_seq=1,
            message_seq=7,
            reason_code=ReasonCode.SUCCESS,
            flags=HeaderFlag.RED_DOT,
        ),
        5,
        SENDACK_V5,
        id="sendack-v5-reddot",
    ),
    pytest.param(
        Sendack(message_id=MESSAGE_ID, client_seq=1, message_seq=7, reason_code=1),
        6,
        SENDACK_V6,
        id="sendack-v6",
    ),
    pytest.param(RECV_FRAME, 5, RECV_V5, id="recv-v5-reddot"),
    pytest.param(Recvack(message_id=MESSAGE_ID, message_seq=7), 5, RECVACK_V5, id="recvack-v5"),
    pytest.param(Recvack(message_id=MESSAGE_ID, message_seq=7), 6, RECVACK_V6, id="recvack-v6"),
    pytest.param(
        Disconnect(reason_code=ReasonCode.CONNECT_KICK, reason="login in other device"),
        5,
        DISCONNECT_KICK,
        id="disconnect-kick",
    ),
    pytest.param(Ping(), 5, b"\x70", id="ping"),
    pytest.param(Pong(), 5, b"\x80", id="pong"),
]


@pytest.mark.parametrize(("frame", "version", "wire"), GOLDEN)
def test_golden_encode(frame: Frame, version: int, wire: bytes) -> None:
    assert encode(frame, version) == wire


@pytest.mark.parametrize(("frame", "version", "wire"), GOLDEN)
def test_golden_decode(frame: Frame, version: int, wire: bytes) -> None:
    assert decode(wire, version) == frame


def test_connect_vector_is_26_bytes_and_independent_of_version() -> None:
    assert len(CONNECT_V5) == 26
    for version in ALL_VERSIONS:
        assert_both_ways(CONNECT_FRAME, version, CONNECT_V5)


def test_connack_same_layout_for_versions_4_to_6() -> None:
    for version in (4, 5, 6):
        assert_both_ways(CONNACK_FRAME, version, CONNACK_V5)


def test_ping_pong_ignore_header_flags() -> None:
    # One byte each, no length byte; the low nibble means nothing.
    assert encode(Ping(flags=0x0F)) == b"\x70"
    assert encode(Pong(flags=0x03)) == b"\x80"
    assert decode(b"\x7f") == Ping()
    assert decode(b"\x85") == Pong()


def test_ping_then_pong_back_to_back() -> None:
    dec = FrameDecoder(2)
    dec.feed(b"\x70\x80\x70")
    assert dec.frames() == [Ping(), Pong(), Ping()]
    assert dec.buffered == 0


# --- CONNACK for old sessions (the JS SDK 1.0.4 speaks version 2) --------------------------

# 20 = CONNACK, no HasServerVersion | 0d = 13 bytes | time_diff -15 | Success | "" | ""
CONNACK_OLD = h("20 0d | ff ff ff ff ff ff ff f1 | 01 | 00 00 | 00 00")


@pytest.mark.parametrize("version", [1, 2, 3])
def test_connack_up_to_v3_has_no_server_version_nor_node_id(version: int) -> None:
    wire = encode(CONNACK_FRAME, version)
    assert wire == CONNACK_OLD
    assert wire[0] & 0x01 == 0  # HasServerVersion must be clear
    assert decode(wire, version) == Connack(time_diff=-15, reason_code=ReasonCode.SUCCESS)


def test_connack_v2_with_key_and_salt() -> None:
    frame = Connack(time_diff=0, reason_code=1, server_key="K", salt="abcdefghijklmnop")
    wire = h("20 1e | 00 00 00 00 00 00 00 00 | 01 | 00 01 4b | 00 10") + b"abcdefghijklmnop"
    assert_both_ways(frame, 2, wire)


def test_connack_header_flags_follow_version_not_frame() -> None:
    # The header of a CONNACK is owned by the codec: bit 0 is HasServerVersion.
    frame = Connack(time_diff=-15, reason_code=1, node_id=1001, server_version=5, flags=0x0E)
    assert encode(frame, 2)[0] == 0x20
    assert encode(frame, 5)[0] == 0x21


# --- SEND / RECV layouts across versions ---------------------------------------------------

# SEND without expire (v1, v2): setting | client_seq | "m1" | "u2" | type | msg_key "" | payload
SEND_NO_EXPIRE = h("32 12 | 00 | 00 00 00 01 | 00 02 6d 31 | 00 02 75 32 | 01 | 00 00 | 68 69")


@pytest.mark.parametrize("version", [1, 2])
def test_send_before_v3_has_no_expire(version: int) -> None:
    assert_both_ways(SEND_FRAME, version, SEND_NO_EXPIRE)


@pytest.mark.parametrize("version", [3, 4, 5, 6])
def test_send_from_v3_carries_expire(version: int) -> None:
    frame = Send(
        setting=0,
        client_seq=1,
        client_msg_no="m1",
        channel_id="u2",
        channel_type=1,
        payload=b"hi",
        expire=3600,
        flags=HeaderFlag.RED_DOT,
    )
    wire = h(
        "32 16 | 00 | 00 00 00 01 | 00 02 6d 31 | 00 02 75 32 | 01 | 00 00 0e 10 | 00 00 | 68 69"
    )
    assert_both_ways(frame, version, wire)


def test_send_expire_is_dropped_before_v3() -> None:
    frame = Send(
        setting=0,
        client_seq=1,
        client_msg_no="m1",
        channel_id="u2",
        channel_type=1,
        payload=b"hi",
        expire=3600,
        flags=HeaderFlag.RED_DOT,
    )
    assert encode(frame, 2) == SEND_NO_EXPIRE
    assert decode(SEND_NO_EXPIRE, 2).expire == 0  # type: ignore[union-attr]


# RECV v2: no expire -> 34 body bytes
RECV_V2 = h(
    "52 22 | 00 | 00 00 | 00 02 75 31 | 00 02 75 31 | 01 | 00 02 6d 31 |"
    "00 00 00 00 07 5b cd 15 | 00 00 00 07 | 65 53 f1 00 | 68 69"
)
# RECV v6: expire present, message_seq u64 -> 42 body bytes
RECV_V6 = h(
    "52 2a | 00 | 00 00 | 00 02 75 31 | 00 02 75 31 | 01 | 00 00 00 00 | 00 02 6d 31 |"
    "00 00 00 00 07 5b cd 15 | 00 00 00 00 00 00 00 07 | 65 53 f1 00 | 68 69"
)


@pytest.mark.parametrize("version", [1, 2])
def test_recv_before_v3_has_no_expire(version: int) -> None:
    assert_both_ways(RECV_FRAME, version, RECV_V2)


@pytest.mark.parametrize("version", [3, 4, 5])
def test_recv_v3_to_v5_matches_the_v5_vector(version: int) -> None:
    assert_both_ways(RECV_FRAME, version, RECV_V5)


def test_recv_v6_has_u64_message_seq() -> None:
    assert_both_ways(RECV_FRAME, 6, RECV_V6)


# --- message_seq width ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_message_seq_width_by_version(version: int) -> None:
    seq_len = 8 if version >= 6 else 4
    wire = encode(Recvack(message_id=1, message_seq=7), version)
    assert wire[1] == 8 + seq_len
    assert wire[-seq_len:] == (7).to_bytes(seq_len, "big")
    ack = encode(Sendack(message_id=1, client_seq=2, message_seq=7, reason_code=1), version)
    assert ack[1] == 8 + 4 + seq_len + 1
    assert ack[14 : 14 + seq_len] == (7).to_bytes(seq_len, "big")


def _seq_frames(seq: int) -> list[Frame]:
    return [
        Sendack(message_id=1, client_seq=1, message_seq=seq, reason_code=1),
        Recvack(message_id=1, message_seq=seq),
        Recv(
            setting=0,
            msg_key="",
            from_uid="a",
            channel_id="b",
            channel_type=1,
            client_msg_no="c",
            message_id=1,
            message_seq=seq,
            timestamp=0,
            payload=b"",
        ),
    ]


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("index", range(3), ids=["sendack", "recvack", "recv"])
def test_message_seq_above_u32_refused_before_v6(version: int, index: int) -> None:
    largest = _seq_frames(2**32 - 1)[index]
    assert decode(encode(largest, version), version) == largest
    with pytest.raises(ProtocolError):
        encode(_seq_frames(2**32)[index], version)


@pytest.mark.parametrize("index", range(3), ids=["sendack", "recvack", "recv"])
@pytest.mark.parametrize("seq", [2**32, 2**64 - 1])
def test_message_seq_u64_at_v6(index: int, seq: int) -> None:
    frame = _seq_frames(seq)[index]
    assert decode(encode(frame, 6), 6) == frame


# --- stream fields: only for 2 <= version < 5 and Setting.STREAM ---------------------------


def _stream_send(setting: int) -> Send:
    return Send(
        setting=setting,
        client_seq=1,
        client_msg_no="m1",
        channel_id="u2",
        channel_type=1,
        payload=b"hi",
        stream_no="s1",
    )


def test_send_stream_no_at_v2() -> None:
    # setting STREAM | client_seq | "m1" | stream_no "s1" | "u2" | type | msg_key | payload
    wire = h(
        "30 16 | 02 | 00 00 00 01 | 00 02 6d 31 | 00 02 73 31 | 00 02 75 32 | 01 | 00 00 | 68 69"
    )
    assert_both_ways(_stream_send(Setting.STREAM), 2, wire)


@pytest.mark.parametrize("version", [3, 4])
def test_send_stream_no_at_v3_v4(version: int) -> None:
    wire = h(
        "30 1a | 02 | 00 00 00 01 | 00 02 6d 31 | 00 02 73 31 | 00 02 75 32 | 01 | 00 00 00 00 |"
        "00 00 | 68 69"
    )
    assert_both_ways(_stream_send(Setting.STREAM), version, wire)


@pytest.mark.parametrize("version", [1, 5, 6])
def test_send_stream_no_absent_outside_v2_to_v4(version: int) -> None:
    frame = _stream_send(Setting.STREAM)
    wire = encode(frame, version)
    assert b"s1" not in wire
    expire = "" if version < 3 else "00 00 00 00"
    body = f"02 | 00 00 00 01 | 00 02 6d 31 | 00 02 75 32 | 01 | {expire} | 00 00 | 68 69"
    assert wire[2:] == h(body)
    decoded = decode(wire, version)
    assert isinstance(decoded, Send)
    assert decoded.stream_no == ""
    assert decoded.setting == Setting.STREAM


@pytest.mark.parametrize("version", [2, 3, 4])
def test_send_stream_no_needs_the_stream_bit(version: int) -> None:
    frame = _stream_send(Setting.NONE)
    assert b"s1" not in encode(frame, version)
    assert decode(encode(frame, version), version).stream_no == ""  # type: ignore[union-attr]


def _stream_recv(setting: int) -> Recv:
    return Recv(
        setting=setting,
        msg_key="",
        from_uid="u1",
        channel_id="u1",
        channel_type=1,
        client_msg_no="m1",
        message_id=MESSAGE_ID,
        message_seq=7,
        timestamp=RECV_TS,
        payload=b"hi",
        stream_flag=2,
        stream_no="s1",
        stream_id=9,
    )


def test_recv_stream_fields_at_v4() -> None:
    wire = h(
        "50 33 | 02 | 00 00 | 00 02 75 31 | 00 02 75 31 | 01 | 00 00 00 00 | 00 02 6d 31 |"
        "02 | 00 02 73 31 | 00 00 00 00 00 00 00 09 |"  # stream_flag, stream_no, stream_id
        "00 00 00 00 07 5b cd 15 | 00 00 00 07 | 65 53 f1 00 | 68 69"
    )
    assert_both_ways(_stream_recv(Setting.STREAM), 4, wire)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_recv_stream_fields_present_v2_to_v4(version: int) -> None:
    frame = _stream_recv(Setting.STREAM)
    wire = encode(frame, version)
    without = encode(_stream_recv(Setting.NONE), version)
    assert len(wire) == len(without) + 1 + 4 + 8
    assert decode(wire, version) == frame


@pytest.mark.parametrize("version", [1, 5, 6])
def test_recv_stream_fields_absent_outside_v2_to_v4(version: int) -> None:
    frame = _stream_recv(Setting.STREAM)
    wire = encode(frame, version)
    plain = encode(_stream_recv(Setting.NONE), version)
    assert wire[3:] == plain[3:]  # only the setting byte differs
    decoded = decode(wire, version)
    assert isinstance(decoded, Recv)
    assert (decoded.stream_flag, decoded.stream_no, decoded.stream_id) == (0, "", 0)


# --- topic: only with Setting.TOPIC ---------------------------------------------------------


def test_send_topic_with_topic_bit() -> None:
    frame = Send(
        setting=Setting.TOPIC,
        client_seq=1,
        client_msg_no="m1",
        channel_id="u2",
        channel_type=1,
        payload=b"hi",
        topic="tp",
    )
    wire = h(
        "30 1a | 08 | 00 00 00 01 | 00 02 6d 31 | 00 02 75 32 | 01 | 00 00 00 00 | 00 00 |"
        "00 02 74 70 | 68 69"  # topic "tp" between msg_key and payload
    )
    assert_both_ways(frame, 5, wire)


def test_recv_topic_with_topic_bit() -> None:
    frame = Recv(
        setting=Setting.TOPIC,
        msg_key="",
        from_uid="u1",
        channel_id="u1",
        channel_type=1,
        client_msg_no="m1",
        message_id=MESSAGE_ID,
        message_seq=7,
        timestamp=RECV_TS,
        payload=b"hi",
        topic="tp",
    )
    wire = h(
        "50 2a | 08 | 00 00 | 00 02 75 31 | 00 02 75 31 | 01 | 00 00 00 00 | 00 02 6d 31 |"
        "00 00 00 00 07 5b cd 15 | 00 00 00 07 | 65 53 f1 00 | 00 02 74 70 | 68 69"
    )
    assert_both_ways(frame, 5, wire)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_topic_dropped_without_topic_bit(version: int) -> None:
    send = Send(
        setting=0,
        client_seq=1,
        client_msg_no="m1",
        channel_id="u2",
        channel_type=1,
        payload=b"hi",
        topic="tp",
    )
    recv = Recv(
        setting=0,
        msg_key="",
        from_uid="u1",
        channel_id="u1",
        channel_type=1,
        client_msg_no="m1",
        message_id=MESSAGE_ID,
        message_seq=7,
        timestamp=RECV_TS,
        payload=b"hi",
        topic="tp",
    )
    for frame in (send, recv):
        wire = encode(frame, version)
        assert b"tp" not in wire
        assert decode(wire, version).topic == ""  # type: ignore[union-attr]


def test_topic_bit_changes_how_the_payload_is_read() -> None:
    # The same body bytes decode differently with and without the TOPIC bit: with it, the
    # first bytes after msg_key are a string, not payload.
    body = h(
        "00 00 00 01 | 00 02 6d 31 | 00 02 75 32 | 01 | 00 00 00 00 | 00 00 | 00 02 74 70 | 68 69"
    )
    plain = decode(h("30 1a 00") + body, 5)
    with_topic = decode(h("30 1a 08") + body, 5)
    assert isinstance(plain, Send)
    assert isinstance(with_topic, Send)
    assert (plain.topic, plain.payload) == ("", h("00 02 74 70 68 69"))
    assert (with_topic.topic, with_topic.payload) == ("tp", b"hi")


# --- SENDACK client_msg_no (version 6 only) -------------------------------------------------


def test_sendack_client_msg_no_appended_at_v6() -> None:
    frame = Sendack(
        message_id=MESSAGE_ID, client_seq=1, message_seq=7, reason_code=1, client_msg_no="m1"
    )
    assert_both_ways(frame, 6, SENDACK_V6[:1] + b"\x19" + SENDACK_V6[2:] + h("00 02 6d 31"))


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_sendack_client_msg_no_not_sent_before_v6(version: int) -> None:
    frame = Sendack(
        message_id=MESSAGE_ID, client_seq=1, message_seq=7, reason_code=1, client_msg_no="m1"
    )
    wire = encode(frame, version)
    assert wire == h("40 11") + SENDACK_V5[2:]


def test_sendack_trailing_client_msg_no_accepted_by_old_decoder() -> None:
    # A WuKongIM v3 server appends client_msg_no whatever the version; our decoder takes it.
    wire = h("40 15") + SENDACK_V5[2:] + h("00 02 6d 31")
    decoded = decode(wire, 5)
    assert isinstance(decoded, Sendack)
    assert decoded.client_msg_no == "m1"
    assert decoded.message_seq == 7


# --- header flags ---------------------------------------------------------------------------


@pytest.mark.parametrize("flags", range(16))
def test_header_flags_low_nibble_round_trip(flags: int) -> None:
    frame = Recvack(message_id=1, message_seq=2, flags=flags)
    wire = encode(frame, 5)
    assert wire[0] == 0x60 | flags
    assert decode(wire, 5) == frame


def test_header_flags_above_low_nibble_are_not_written() -> None:
    wire = encode(Recvack(message_id=1, message_seq=2, flags=0xF3), 5)
    assert wire[0] == 0x63


# --- limits and encode-side validation -----------------------------------------------------


def test_string_of_32767_bytes_is_the_longest() -> None:
    longest = Disconnect(reason_code=1, reason="a" * 32_767)
    assert decode(encode(longest, 5), 5) == longest
    with pytest.raises(ProtocolError):
        encode(Disconnect(reason_code=1, reason="a" * 32_768), 5)


def test_string_limit_counts_utf8_bytes_not_characters() -> None:
    fits = Disconnect(reason_code=1, reason="é" * 16_383 + "a")  # 32 767 bytes
    assert decode(encode(fits, 5), 5) == fits
    with pytest.raises(ProtocolError):
        encode(Disconnect(reason_code=1, reason="é" * 16_384), 5)  # 32 768 bytes


def test_string_not_encodable_as_utf8_raises_protocol_error() -> None:
    # A lone surrogate (e.g. from json.loads('"\\ud800"') in an HTTP body) has no UTF-8 form.
    with pytest.raises(ProtocolError):
        encode(Disconnect(reason_code=1, reason="\ud800"), 5)


def test_body_of_exactly_one_mebibyte() -> None:
    # EVENT body = id "" (2) + type "" (2) + timestamp (8) + data
    frame = Event(id="", type="", timestamp=0, data=bytes((1 << 20) - 12))
    wire = encode(frame, 5)
    assert wire[:4] == h("c0 80 80 40")
    assert decode(wire, 5) == frame


def test_body_over_one_mebibyte_refused() -> None:
    frame = Event(id="", type="", timestamp=0, data=bytes((1 << 20) - 11))
    with pytest.raises(FrameTooLarge):
        encode(frame, 5)


_SEND = Send(
    setting=0, client_seq=1, client_msg_no="m", channel_id="c", channel_type=1, payload=b""
)

OUT_OF_RANGE = [
    pytest.param(replace(_SEND, client_seq=2**32), id="send-client_seq-u32"),
    pytest.param(replace(_SEND, client_seq=-1), id="send-client_seq-negative"),
    pytest.param(replace(_SEND, channel_type=256), id="send-channel_type-u8"),
    pytest.param(replace(_SEND, setting=256), id="send-setting-u8"),
    pytest.param(replace(_SEND, expire=2**32), id="send-expire-u32"),
    pytest.param(
        Connect(
            version=5,
            device_flag=0,
            device_id="",
            uid="",
            token="",
            client_timestamp=2**63,
            client_key="",
        ),
        id="connect-timestamp-i64",
    ),
    pytest.param(Connect(1000, 0, "", "", "", 0, ""), id="connect-version-u8"),
    pytest.param(Connack(time_diff=0, reason_code=1, node_id=2**64), id="connack-node_id-u64"),
    pytest.param(Connack(time_diff=-(2**63) - 1, reason_code=1), id="connack-time_diff-i64"),
    pytest.param(
        Sendack(message_id=2**63, client_seq=0, message_seq=0, reason_code=1),
        id="sendack-message_id-i64",
    ),
    pytest.param(Recvack(message_id=0, message_seq=-1), id="recvack-seq-negative"),
    pytest.param(
        Recv(
            setting=0,
            msg_key="",
            from_uid="",
            channel_id="",
            channel_type=1,
            client_msg_no="",
            message_id=0,
            message_seq=0,
            timestamp=2**31,
            payload=b"",
        ),
        id="recv-timestamp-i32",
    ),
    pytest.param(Disconnect(reason_code=-1), id="disconnect-reason-u8"),
    pytest.param(Event(id="", type="", timestamp=2**63, data=b""), id="event-timestamp-i64"),
]


@pytest.mark.parametrize("frame", OUT_OF_RANGE)
def test_out_of_range_field_raises_protocol_error(frame: Frame) -> None:
    with pytest.raises(ProtocolError):
        encode(frame, 5)
