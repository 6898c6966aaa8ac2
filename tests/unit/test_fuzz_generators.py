"""The live fuzzer's generators and mutators (chaos/fuzz), as pure functions: what they build
is what the wire formats say, frames meant to keep a session open do, a seed replays the same
bytes, and nothing they send may name the workload's ids or reach a destructive call."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from chaos.fuzz import http, raft, rpc, tcp, ws
from chaos.fuzz.context import FuzzContext, FuzzUser
from chaos.fuzz.mutate import MAX_GROWTH, mutate
from chaos.fuzz.safety import (
    DESTRUCTIVE_ROUTES,
    Protected,
    json_is_safe,
    sanitize,
    unparseable_json,
)
from chaos.fuzz.scenario import Flood, Read, Received, Scenario, Write, scenario_rng
from chaos.fuzz.wk import (
    SendFields,
    WkSession,
    frame,
    keep_open_frame,
    send_body,
    signed_send,
    terminal_frame,
    varint,
)
from proto.wkproto import (
    Connack,
    Connect,
    FrameDecoder,
    FrameType,
    MalformedFrame,
    Ping,
    ProtocolError,
    Recvack,
    Send,
    Setting,
    Sub,
    decode,
    encode,
)
from proto.wkproto.crypto import KeyPair, SessionCipher, send_sign

SEEDS = settings(derandomize=True, deadline=None, max_examples=200)
WORKLOAD_IDS = ("u0", "u1", "u2", "g0", "g1")
CTX = FuzzContext(
    hosts={1: "127.0.0.1", 2: "127.0.0.2"},
    users=tuple(FuzzUser(f"fz{i}", f"tok{i}", 1) for i in range(4)),
    groups=("fzg0", "fzg1"),
    protected_ids=WORKLOAD_IDS,
)


def session(version: int = 6, encrypted: bool = True) -> WkSession:
    cipher = SessionCipher(b"k" * 16, b"i" * 16) if encrypted else None
    return WkSession("fz0", version, cipher)


# --- a scenario against a fake server ---------------------------------------------------------


SERVER_KEY = KeyPair(b"\x01" * 32)
"""The fake server's key: fixed, so that two runs of a scenario derive the same AES key."""


def connack_bytes() -> bytes:
    return encode(
        Connack(0, 1, server_key=SERVER_KEY.public_b64, salt="s" * 16, node_id=1, server_version=6)
    )


def drive(sc: Scenario, ws_mode: bool = False) -> list[bytes]:
    """Run a scenario's steps, answering an upgrade with 101 and a CONNECT with a CONNACK;
    returns what it wrote."""
    writes: list[bytes] = []
    pending = b""
    upgraded = not ws_mode
    answer: Received | None = None
    while True:
        try:
            step = sc.steps.send(answer)
        except StopIteration:
            return writes
        answer = None
        if isinstance(step, Write):
            writes.append(step.data)
            pending = (pending + step.data)[-4096:]  # a CONNECT or request head fits
        elif isinstance(step, Flood):
            writes.extend([step.data] * step.connections)
        elif isinstance(step, Read):
            if not upgraded and b"\r\n\r\n" in pending:
                upgraded, pending = True, b""
                answer = Received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", False)
            elif upgraded and b"fz-dev" in pending:
                pending = b""
                data = connack_bytes()
                answer = Received(bytes([0x82, len(data)]) + data if ws_mode else data, False)
            else:
                answer = Received(b"", False)


# --- mutators ---------------------------------------------------------------------------------


@SEEDS
@given(st.binary(max_size=300), st.integers(0, 2**32))
def test_mutate_is_bounded_and_replays_from_its_seed(data: bytes, seed: int) -> None:
    out = mutate(data, random.Random(seed))
    assert len(out) <= len(data) + MAX_GROWTH
    assert out == mutate(data, random.Random(seed))


def test_mutate_changes_its_input_most_of_the_time() -> None:
    data = bytes(range(64))
    changed = sum(mutate(data, random.Random(i)) != data for i in range(200))
    assert changed > 180


# --- WKProto ----------------------------------------------------------------------------------


def test_varint_and_length_overrides_reach_the_decoder_as_written() -> None:
    assert varint(127) == b"\x7f" and varint(128) == b"\x80\x01"
    assert len(varint(2**28)) == 5  # more than the protocol allows
    d = FrameDecoder()
    d.feed(frame(FrameType.SEND, 0, b"", length=b"\xff\xff\xff\xff\x7f"))
    with pytest.raises(MalformedFrame):
        d.next_frame()


@pytest.mark.parametrize("version", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("setting", [0, Setting.TOPIC, Setting.STREAM | Setting.TOPIC])
def test_send_body_is_what_the_codec_decodes_at_every_version(version: int, setting: int) -> None:
    f = SendFields(setting, 7, b"cmn", b"fzg0", 2, b"payload", b"key", 60, b"topic", b"stream")
    got = decode(frame(FrameType.SEND, 2, send_body(f, version)), version)
    assert isinstance(got, Send)
    assert (got.client_seq, got.client_msg_no, got.channel_id, got.payload) == (
        7,
        "cmn",
        "fzg0",
        b"payload",
    )
    assert got.topic == ("topic" if setting & Setting.TOPIC else "")
    assert got.expire == (60 if version >= 3 else 0)
    assert got.stream_no == ("stream" if 2 <= version < 5 and setting & Setting.STREAM else "")


def test_a_signed_send_carries_the_msg_key_the_server_computes() -> None:
    s = session()
    f = SendFields(0, 3, b"c-1", b"fz1", 1, b'{"type":1}')
    got = decode(signed_send(s, f), 6)
    assert isinstance(got, Send)
    assert s.cipher is not None
    sign = send_sign(3, "c-1", "fz1", 1, got.payload)
    assert got.msg_key == s.cipher.msg_key(sign)
    assert s.cipher.decrypt(got.payload) == b'{"type":1}'


@SEEDS
@given(st.integers(0, 2**32), st.sampled_from([3, 4, 5, 6]), st.booleans())
def test_frames_meant_to_keep_a_session_open_decode_as_such(
    seed: int, version: int, encrypted: bool
) -> None:
    """What the server closes a session for is a frame it cannot decode or does not expect
    after CONNECT; a batch must contain neither, or the rest of it is never read."""
    rng = random.Random(seed)
    s = session(version, encrypted)
    for _ in range(20):
        data = keep_open_frame(rng, CTX, s)
        try:
            f = decode(data, version)
        except ProtocolError as e:
            raise AssertionError(f"{data[:80]!r}: {e}") from None
        assert isinstance(f, Send | Ping | Recvack | Sub)
        if isinstance(f, Send):
            assert not CTX.protected.hits(f.channel_id)


def test_terminal_frames_cover_the_closing_cases() -> None:
    """Most terminal frames do not decode, or decode to something a session may not send."""
    rng = random.Random(5)
    closing = 0
    for _ in range(300):
        try:
            f = decode(terminal_frame(rng, CTX, session()), 6)
        except ProtocolError:
            closing += 1
            continue
        if not isinstance(f, Send | Ping | Recvack | Sub):
            closing += 1
    assert closing > 200


def test_a_session_logs_in_then_writes_many_frames_per_write() -> None:
    frames = writes = 0
    for n in range(60):
        sc = tcp.make(CTX, scenario_rng(3, "tcp", n))
        if sc.kind != "session":
            continue
        out = drive(sc)
        assert isinstance(decode(out[0]), Connect)
        d = FrameDecoder()
        d.feed(b"".join(out[1:]))
        try:
            while d.next_frame() is not None:
                frames += 1
        except ProtocolError:
            pass  # the terminal frame, if any
        writes += len(out) - 1
    assert writes and frames / writes > 10


@pytest.mark.parametrize(
    ("module", "target", "ws_mode"),
    [(tcp, "tcp", False), (ws, "ws", True), (http, "http", False), (rpc, "grpc", False)],
)
def test_a_seed_replays_the_same_bytes(module: object, target: str, ws_mode: bool) -> None:
    make: Callable[[FuzzContext, random.Random], Scenario] = module.make  # type: ignore[attr-defined]
    for n in range(30):
        a = drive(make(CTX, scenario_rng(9, target, n)), ws_mode)
        b = drive(make(CTX, scenario_rng(9, target, n)), ws_mode)
        assert a == b


def test_raft_scenarios_replay_except_for_the_clock_in_frames() -> None:
    for n in range(30):
        a = drive(raft.make(CTX, scenario_rng(4, "raft", n)))
        b = drive(raft.make(CTX, scenario_rng(4, "raft", n)))
        assert [len(w) for w in a] == [len(w) for w in b]


# --- WebSocket --------------------------------------------------------------------------------


@SEEDS
@given(st.binary(max_size=70_000), st.integers(0, 2**32))
def test_ws_frames_parse_in_wsproto_as_sent(payload: bytes, seed: int) -> None:
    parser = FrameProtocol(client=False, extensions=[])
    parser.receive_bytes(ws.ws_frame(ws.BINARY, payload, random.Random(seed)))
    frames = list(parser.received_frames())
    assert len(frames) == 1
    assert frames[0].opcode == Opcode.BINARY and bytes(frames[0].payload) == payload


def test_ws_close_races_make_the_server_close_then_ping_it() -> None:
    """The fuzzer's answer to a server that answers PINGs while it closes: a rejected frame,
    then control frames a few milliseconds apart."""
    found = 0
    for n in range(200):
        sc = ws.make(CTX, scenario_rng(1, "ws", n))
        if sc.kind != "close_race":
            continue
        writes = drive(sc, ws_mode=True)
        pings = [w for w in writes[2:] if w[:1] == b"\x89"]
        if len(pings) >= 3:
            found += 1
    assert found >= 10


def test_upgrade_request_is_one_wsproto_accepts() -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import Request

    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(ws.upgrade_request("127.0.0.1", 5200, random.Random(1)))
    assert isinstance(next(server.events()), Request)


# --- what must never be sent ------------------------------------------------------------------


def test_protected_ids_are_found_in_every_form_a_channel_takes() -> None:
    p = Protected(WORKLOAD_IDS)
    for value in ("u1", "u1@fz2", "fz2@u1", "g0____cmd", "u1@u2____cmd"):
        assert p.hits(value)
        assert not p.hits(p.rewrite(value))
    for value in ("fz1", "u10", "xg0", "", "fzu1@fzu2"):
        assert not p.hits(value)
    assert sanitize({"u1": ["g0", {"x": "u2@fz1"}], "n": 1}, p) == {
        "fzu1": ["fzg0", {"x": "fzu2@fz1"}],
        "n": 1,
    }


@SEEDS
@given(st.integers(0, 2**32), st.binary(max_size=200))
def test_unparseable_json_is_never_an_object(seed: int, body: bytes) -> None:
    out = unparseable_json(random.Random(seed), body)
    try:
        value = json.loads(out)
    except (ValueError, RecursionError):
        return
    assert not isinstance(value, dict)


def _request_parts(req: bytes) -> tuple[str, str, bytes]:
    head, _, body = req.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    method, target = [*line, "", ""][:2]
    return method, target, body


def test_http_requests_spare_workload_ids_and_destructive_routes() -> None:
    rng = random.Random(11)
    for i in range(3000):
        req = http.one_request(rng, CTX, close=False) if i % 4 else http.raw_request(rng, CTX)
        _, target, body = _request_parts(req)
        assert json_is_safe(body, CTX.api_protected), req[:300]
        assert not any(
            CTX.api_protected.hits(tok) for tok in unquote(target).replace("=", "&").split("&")
        )
        if target.split("?")[0] in DESTRUCTIVE_ROUTES:
            with contextlib.suppress(ValueError, RecursionError):
                assert not isinstance(json.loads(body), dict), req[:300]


def test_grpc_bodies_to_destructive_methods_never_decode() -> None:
    rng = random.Random(2)
    destructive = [m for m in rpc.methods() if m.destructive]
    assert len(destructive) >= 15  # the descriptors were read
    for _ in range(2000):
        m = rng.choice(rpc.methods())
        body = rpc.request_body(m, rng, CTX)
        if m.peer:
            continue
        msg = m.request()
        try:
            msg.ParseFromString(body)
        except Exception:
            continue
        assert not m.destructive, (m.path, body.hex())
        assert rpc.safe_body(m, body, CTX)


def test_the_route_table_is_the_servers() -> None:
    from typing import cast
    from unittest.mock import MagicMock

    from node.config import Config
    from node.http.api import ApiContext, build_router

    router = build_router(cast(ApiContext, MagicMock(config=Config())))
    served = {f"{m} {p}" for m, p in router.paths()}
    fuzzed = {f"POST {p}" for p in http.POST_ROUTES}
    fuzzed |= {f"GET {p}" for p in (*http.GET_ROUTES, *http.RARE_GET)}
    assert served == fuzzed


# --- HTTP/2 and Raft framing ------------------------------------------------------------------


def test_hpack_integers_match_rfc_7541() -> None:
    assert rpc.hpack_int(10, 5) == b"\x0a"
    assert rpc.hpack_int(1337, 5) == b"\x1f\x9a\x0a"
    assert rpc.hpack_int(42, 8) == b"\x2a"


def test_raft_length_prefix_is_pysyncobjs_signed_native_int() -> None:
    assert raft.length_prefix(5) == b"\x05\x00\x00\x00"
    assert raft.length_prefix((1 << 31) - 1) == b"\xff\xff\xff\x7f"
    assert raft.length_prefix(1 << 31) == b"\x00\x00\x00\x80"  # read back as negative


def test_every_generator_runs_without_error() -> None:
    makers = {"tcp": tcp.make, "ws": ws.make, "http": http.make, "raft": raft.make}
    makers["grpc"] = rpc.make
    for target, make in makers.items():
        kinds = set()
        for n in range(150):
            sc = make(CTX, scenario_rng(21, target, n))
            kinds.add(sc.kind)
            assert sc.node in CTX.hosts
            drive(sc, ws_mode=target == "ws")
        assert len(kinds) >= 4, (target, kinds)
