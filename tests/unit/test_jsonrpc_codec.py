"""The JSON-RPC codec (proto/jsonrpc): requests to WKProto frames and frames to JSON-RPC text,
every refusal with its code and consequence, and fuzzing: whatever a client sends, the codec
yields a frame or an answer and never raises; every frame it yields survives a WKProto trip."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto.jsonrpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_DEPTH,
    METHOD_NOT_FOUND,
    METHODS,
    PARSE_ERROR,
    SESSION_STATE,
    Answer,
    JsonRpcCodec,
    starts_json,
)
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
    encode,
)
from tests.unit.test_wkproto_roundtrip import normalize

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CONNECT = {"uid": "alice", "token": "t", "deviceFlag": 1, "deviceId": "d", "clientTimestamp": 5}


def request(method: str, params: Any = None, rid: Any = "1", **extra: Any) -> str:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, **extra}
    if rid is not None:
        body["id"] = rid
    if params is not None:
        body["params"] = params
    return json.dumps(body)


def take(codec: JsonRpcCodec, message: str | bytes) -> Frame | Answer:
    codec.feed(message)
    item = codec.next_frame()
    assert item is not None
    assert codec.next_frame() is None  # one message, one item
    return item


def connected() -> JsonRpcCodec:
    codec = JsonRpcCodec()
    assert isinstance(take(codec, request("connect", CONNECT, rid="c")), Connect)
    return codec


def error_of(answer: Frame | Answer) -> tuple[int, Any, bool]:
    """(code, id, closes) of an answered refusal."""
    assert isinstance(answer, Answer), answer
    assert answer.text is not None
    doc = json.loads(answer.text)
    assert doc["jsonrpc"] == "2.0" and set(doc) == {"jsonrpc", "id", "error"}
    return doc["error"]["code"], doc["id"], answer.close


# --- requests to frames -------------------------------------------------------------------


def test_connect_maps_every_field() -> None:
    frame = take(
        JsonRpcCodec(),
        request(
            "connect",
            {
                "uid": "alice",
                "token": "tok",
                "version": 5,
                "deviceFlag": 2,
                "deviceId": "pc-1",
                "clientTimestamp": 1_700_000_000_000,
                "clientKey": "ignored-but-kept",
                "header": {"redDot": True},
            },
        ),
    )
    assert frame == Connect(
        version=5,
        device_flag=2,
        device_id="pc-1",
        uid="alice",
        token="tok",
        client_timestamp=1_700_000_000_000,
        client_key="ignored-but-kept",
        flags=0x02,
    )


def test_connect_defaults_are_wukongims_zero_values() -> None:
    frame = take(JsonRpcCodec(), '{"method":"connect","id":"x","params":{"uid":"u"}}')
    assert frame == Connect(0, 0, "", "u", "", 0, "")


def test_send_with_an_object_payload_and_every_option() -> None:
    codec = connected()
    frame = take(
        codec,
        request(
            "send",
            {
                "clientMsgNo": "m1",
                "channelId": "bob",
                "channelType": 1,
                "payload": {"type": 1, "content": "hé"},
                "header": {"noPersist": True, "redDot": True, "syncOnce": False, "dup": True},
                "setting": {"receipt": True, "signal": True, "stream": False},
                "msgKey": "k",
                "expire": 60,
                "streamNo": "s1",
                "topic": "news",
            },
        ),
    )
    assert frame == Send(
        setting=0x80 | 0x20 | 0x08,  # the topic bit comes with a topic
        client_seq=1,
        client_msg_no="m1",
        channel_id="bob",
        channel_type=1,
        payload='{"type":1,"content":"hé"}'.encode(),
        msg_key="k",
        expire=60,
        topic="news",
        stream_no="s1",
        flags=0x01 | 0x02 | 0x08,
    )


def test_send_with_a_base64_payload_and_client_seqs_that_count() -> None:
    codec = connected()
    raw = bytes(range(256))
    params = {"channelId": "g", "channelType": 2, "payload": base64.b64encode(raw).decode()}
    first = take(codec, request("send", params, rid="s1"))
    second = take(codec, request("send", params, rid="s2"))
    assert isinstance(first, Send) and isinstance(second, Send)
    assert first.payload == raw and (first.client_seq, second.client_seq) == (1, 2)
    assert take(codec, request("send", {**params, "payload": ""})).payload == b""  # type: ignore[union-attr]


def test_recvack_ping_and_disconnect() -> None:
    codec = connected()
    ack = take(codec, request("recvack", {"messageId": "9007199254740993", "messageSeq": 7}, None))
    assert ack == Recvack(message_id=9007199254740993, message_seq=7)
    assert take(codec, request("recvack", {"messageId": 12, "messageSeq": 2**64 - 1}, None)) == (
        Recvack(message_id=12, message_seq=2**64 - 1)
    )
    for params in (None, {}, [], "anything"):
        assert take(codec, request("ping", params)) == Ping()
    assert take(codec, request("disconnect", {"reasonCode": 0, "reason": "bye"})) == Disconnect(
        0, "bye"
    )


def test_the_jsonrpc_member_may_be_left_out_and_ids_may_be_integers() -> None:
    codec = JsonRpcCodec()
    assert isinstance(take(codec, '{"method":"connect","id":3,"params":{"uid":"u"}}'), Connect)
    assert codec.encode(Connack(time_diff=0, reason_code=1)) is not None
    assert json.loads(codec.encode(Connack(0, 1)) or "null") is None  # answered once


# --- frames to text -----------------------------------------------------------------------


def test_connack_answers_the_connect_request_once() -> None:
    codec = JsonRpcCodec()
    take(codec, request("connect", CONNECT, rid="login"))
    text = codec.encode(Connack(time_diff=-15, reason_code=1, node_id=3, server_version=6))
    assert json.loads(text or "") == {
        "jsonrpc": "2.0",
        "id": "login",
        "result": {
            "serverKey": "",
            "salt": "",
            "timeDiff": -15,
            "reasonCode": 1,
            "serverVersion": 6,
            "nodeId": 3,
        },
    }
    assert codec.encode(Connack(0, 1)) is None


def test_a_refused_connect_is_a_result_with_its_reason_code() -> None:
    codec = JsonRpcCodec()
    take(codec, request("connect", CONNECT, rid="login"))
    assert json.loads(codec.encode(Connack(0, reason_code=2)) or "")["result"]["reasonCode"] == 2


def test_sendacks_answer_their_own_requests_in_any_order() -> None:
    codec = connected()
    params = {"channelId": "b", "channelType": 1, "payload": {}}
    sends = [take(codec, request("send", params, rid=rid)) for rid in ("x", 42, "z")]
    take(codec, request("send", params, rid=None))  # a notification: never answered
    seqs = [s.client_seq for s in sends if isinstance(s, Send)]
    out = []
    for seq in reversed([*seqs, 4]):
        text = codec.encode(
            Sendack(
                message_id=2**62 + seq,
                client_seq=seq,
                message_seq=seq,
                reason_code=1,
                client_msg_no="n",
                flags=0x02,
            )
        )
        out.append(None if text is None else json.loads(text))
    assert out[0] is None  # the notification's
    assert [(o["id"], o["result"]["messageSeq"]) for o in out[1:]] == [("z", 3), (42, 2), ("x", 1)]
    assert out[1]["result"] == {
        "header": {"redDot": True},
        "messageId": str(2**62 + 3),
        "messageSeq": 3,
        "clientMsgNo": "n",
        "reasonCode": 1,
    }
    # A SENDACK nobody asked for (none can come) is dropped, not guessed at.
    assert codec.encode(Sendack(1, client_seq=99, message_seq=1, reason_code=1)) is None


def test_pongs_answer_pings_in_order_and_not_ping_notifications() -> None:
    codec = connected()
    take(codec, request("ping", rid="p1"))
    take(codec, request("ping", rid=None))
    take(codec, request("ping", rid="p3"))
    answers = [codec.encode(Pong()) for _ in range(4)]
    assert [json.loads(a) if a else None for a in answers] == [
        {"jsonrpc": "2.0", "id": "p1", "result": {}},
        None,
        {"jsonrpc": "2.0", "id": "p3", "result": {}},
        None,
    ]


def recv_frame(payload: bytes, **kw: Any) -> Recv:
    fields: dict[str, Any] = {
        "setting": 0,
        "msg_key": "",
        "from_uid": "bob",
        "channel_id": "bob",
        "channel_type": 1,
        "client_msg_no": "m",
        "message_id": 2**63 - 1,
        "message_seq": 2**64 - 1,
        "timestamp": 1_700_000_000,
        "payload": payload,
    }
    fields.update(kw)
    return Recv(**fields)


def test_recv_carries_a_json_object_payload_verbatim_and_anything_else_as_base64() -> None:
    codec = JsonRpcCodec()
    spaced = b'{ "type" : 1, "content": "h\\u00e9", "n": 1.000 }'
    text = codec.encode(recv_frame(spaced, flags=0x02 | 0x04, setting=0x80, expire=9, topic="t"))
    assert text is not None and text.endswith(',"payload":' + spaced.decode() + "}}")
    doc = json.loads(text)
    assert doc["method"] == "recv" and "id" not in doc
    assert doc["params"] == {
        "header": {"redDot": True, "syncOnce": True},
        "messageId": str(2**63 - 1),
        "messageSeq": 2**64 - 1,
        "clientMsgNo": "m",
        "timestamp": 1_700_000_000,
        "channelId": "bob",
        "channelType": 1,
        "fromUid": "bob",
        "setting": {"receipt": True},
        "expire": 9,
        "topic": "t",
        "payload": {"type": 1, "content": "hé", "n": 1.0},
    }
    for other in (b"\xff\x00", b"[1]", b'"s"', b"1", b"{bad", b'{"x":NaN}', b"\xef\xbb\xbf{}"):
        params = json.loads(codec.encode(recv_frame(other)) or "")["params"]
        assert params["payload"] == base64.b64encode(other).decode()
        assert params["header"] == {}


def test_recv_with_stream_fields() -> None:
    params = json.loads(
        JsonRpcCodec().encode(recv_frame(b"{}", stream_no="s", stream_id=5, stream_flag=2)) or ""
    )["params"]
    assert (params["streamNo"], params["streamId"], params["streamFlag"]) == ("s", "5", 2)


def test_disconnect_and_event_notifications() -> None:
    codec = JsonRpcCodec()
    assert json.loads(codec.encode(Disconnect(12, "login in other device")) or "") == {
        "jsonrpc": "2.0",
        "method": "disconnect",
        "params": {"reasonCode": 12, "reason": "login in other device"},
    }
    event = json.loads(codec.encode(Event("e1", "stream.delta", 5, b'{"delta":"x"}')) or "")
    assert event["method"] == "event"
    assert event["params"] == {
        "id": "e1",
        "type": "stream.delta",
        "timestamp": 5,
        "data": '{"delta":"x"}',
    }
    assert codec.encode(Sub(0, "s", "c", 2, 0)) is None  # nothing JSON-RPC carries


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        '{"method":"ping"',
        "",
        "   ",
        b'{"method":"\xff"}',
        '{"id":"1","method":"ping","params":[NaN]}',
        '{"id":"1","method":"ping","params":Infinity}',
        '{"id":"1","method":"ping","params":' + "1" * 5000 + "}",
        '{"a":' + "[" * 50_000 + "]" * 50_000 + "}",
        '{"id":"1"} {"id":"2"}',
    ],
)
def test_parse_errors_are_answered_with_id_null_and_close(message: str | bytes) -> None:
    assert error_of(take(connected(), message)) == (PARSE_ERROR, None, True)


@pytest.mark.parametrize(
    ("message", "rid"),
    [
        ('[{"method":"ping","id":"1"}]', None),
        ("[]", None),
        ('"connect"', None),
        ("42", None),
        ('{"id":"1","result":{}}', "1"),
        ('{"id":"1","error":{"code":1,"message":"m"}}', "1"),
        ('{"id":"1","method":"ping","jsonrpc":"1.0"}', None),
        ('{"id":"1","method":"ping","jsonrpc":2}', None),
        ('{"id":1.5,"method":"ping"}', None),
        ('{"id":true,"method":"ping"}', None),
        ('{"id":["a"],"method":"ping"}', None),
        ('{"id":"' + "x" * 257 + '","method":"ping"}', None),
        ('{"id":"a\\u0000b","method":"ping"}', None),
        ('{"id":"a\\ud800b","method":"ping"}', None),
        ('{"id":' + str(2**63) + ',"method":"ping"}', None),
        ('{"id":"1"}', "1"),
        ('{"id":"1","method":7}', "1"),
        ('{"id":"1","method":"send","params":' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}", None),
    ],
)
def test_invalid_requests_are_answered_and_close(message: str, rid: Any) -> None:
    assert error_of(take(connected(), message)) == (INVALID_REQUEST, rid, True)


def test_nesting_up_to_the_limit_is_taken() -> None:
    inner = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)
    assert take(connected(), '{"id":"1","method":"ping","params":' + inner + "}") == Ping()


def test_unknown_methods_close_and_their_names_are_not_echoed_whole() -> None:
    for method in ("subscribe", "unsubscribe", "pong", "recv", "event", "", "Connect"):
        assert error_of(take(connected(), request(method, {}, rid="m"))) == (
            METHOD_NOT_FOUND,
            "m",
            True,
        )
    answer = take(connected(), request("x" * 100_000, rid="m"))
    assert isinstance(answer, Answer) and answer.text is not None and len(answer.text) < 300
    # A notification of an unknown method is not answered (JSON-RPC), but still closes.
    silent = take(connected(), request("subscribe", {}, rid=None))
    assert silent == Answer(text=None, close=True, reason="-32601 unknown method 'subscribe'")


def test_requests_before_connect_and_a_second_connect_close() -> None:
    for method in sorted(METHODS - {"connect"}):
        assert error_of(take(JsonRpcCodec(), request(method, {}, rid=5))) == (
            SESSION_STATE,
            5,
            True,
        )
    assert error_of(take(connected(), request("connect", CONNECT, rid="again"))) == (
        SESSION_STATE,
        "again",
        True,
    )
    # A recvack notification first: closed without a word.
    early = take(JsonRpcCodec(), request("recvack", {}, rid=None))
    assert isinstance(early, Answer) and early.text is None and early.close


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"uid": 5},
        {"uid": "u", "token": ["t"]},
        {"uid": "u", "deviceFlag": "1"},
        {"uid": "u", "deviceFlag": True},
        {"uid": "u", "deviceFlag": 1.0},
        {"uid": "u", "deviceFlag": 256},
        {"uid": "u", "version": -1},
        {"uid": "u", "clientTimestamp": 2**63},
        {"uid": "u", "header": {"redDot": 1}},
        {"uid": "u", "header": []},
        {"uid": "\udfff"},
        {"uid": "u", "deviceId": "é" * 20_000},
        "params",
        [1, 2],
    ],
)
def test_bad_connect_params_are_answered_and_close(params: Any) -> None:
    assert error_of(take(JsonRpcCodec(), request("connect", params, rid="c"))) == (
        INVALID_PARAMS,
        "c",
        True,
    )


GOOD_SEND = {"channelId": "b", "channelType": 1, "payload": {"type": 1}}


@pytest.mark.parametrize(
    "change",
    [
        {"channelId": None},
        {"channelId": 1},
        {"channelType": None},
        {"channelType": -1},
        {"channelType": 256},
        {"channelType": "2"},
        {"payload": None},
        {"payload": 5},
        {"payload": [1, 2]},
        {"payload": "a"},
        {"payload": "YQ"},  # unpadded
        {"payload": "YQ==\n"},
        {"payload": "é"},
        {"payload": {"s": "\ud800"}},
        {"expire": 2**32},
        {"expire": -1},
        {"clientMsgNo": 1},
        {"topic": "t" * 40_000},
        {"setting": {"stream": "yes"}},
        {"setting": "receipt"},
        {"header": {"dup": None, "redDot": 0}},
    ],
)
def test_bad_send_params_are_answered_and_the_session_goes_on(change: dict[str, Any]) -> None:
    codec = connected()
    params = {k: v for k, v in {**GOOD_SEND, **change}.items() if v is not None}
    assert error_of(take(codec, request("send", params, rid="s"))) == (INVALID_PARAMS, "s", False)
    assert isinstance(take(codec, request("send", GOOD_SEND)), Send)  # next request is fine
    assert codec.encode(Sendack(0, 1, 0, 9)) is None  # the refused one holds no client_seq


def test_bad_notification_params_are_not_answered_and_the_session_goes_on() -> None:
    codec = connected()
    for params in (
        {"messageId": "x1", "messageSeq": 1},
        {"messageId": "1" * 20, "messageSeq": 1},
        {"messageId": "-1", "messageSeq": 1},
        {"messageId": "١٢", "messageSeq": 1},  # not ASCII digits
        {"messageId": "1", "messageSeq": -1},
        {"messageId": "1"},
        [],
    ):
        answer = take(codec, request("recvack", params, rid=None))
        assert isinstance(answer, Answer)
        assert (answer.text, answer.close) == (None, False), params
        assert answer.reason.startswith("-32602")
    assert take(codec, request("ping")) == Ping()


def test_null_members_count_as_absent() -> None:
    codec = connected()
    frame = take(codec, request("send", {**GOOD_SEND, "topic": None, "header": None}))
    assert isinstance(frame, Send) and frame.topic == "" and frame.flags == 0
    # "id": null is a notification, as WuKongIM reads it.
    assert take(codec, '{"id":null,"method":"ping"}') == Ping()
    assert codec.encode(Pong()) is None


def test_starts_json() -> None:
    assert starts_json('  \n{"method":"connect"}') is True
    assert starts_json(b"\t[") is True
    assert starts_json(b"\x10\x05") is False
    assert starts_json("x{") is False
    assert starts_json(b" \r\n") is None
    assert starts_json("") is None


# --- fuzzing ------------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "uid", "token", "version", "deviceFlag", "deviceId", "clientTimestamp", "clientKey",
    "header", "setting", "channelId", "channelType", "payload", "clientMsgNo", "msgKey",
    "expire", "topic", "streamNo", "messageId", "messageSeq", "reasonCode", "reason",
]  # fmt: skip
VALUES = st.one_of(
    JSON,
    st.integers(-1, 2**64),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.dictionaries(
        st.sampled_from(["redDot", "noPersist", "dup", "topic", "stream"]),
        st.booleans() | JSON,
        max_size=3,
    ),
    st.text(max_size=40).map(lambda s: s + "\ud800"),
)
PARAMS = st.one_of(JSON, st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=12))
REQUESTS = st.fixed_dictionaries(
    {"method": st.sampled_from([*sorted(METHODS), "subscribe", ""]) | JSON},
    optional={
        "id": st.one_of(st.text(max_size=300), st.integers(-(2**64), 2**64), JSON),
        "params": PARAMS,
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2.0]) | JSON,
        "result": JSON,
    },
)


def check(codec: JsonRpcCodec, message: str | bytes) -> None:
    """The contract the gateway relies on: a frame that is valid WKProto, or an answer that is
    valid JSON-RPC; and nothing raises."""
    codec.feed(message)
    item = codec.next_frame()
    assert codec.next_frame() is None
    if isinstance(item, Answer):
        if item.text is not None:
            doc = json.loads(item.text)
            assert doc["error"]["code"] in (
                PARSE_ERROR,
                INVALID_REQUEST,
                METHOD_NOT_FOUND,
                INVALID_PARAMS,
                SESSION_STATE,
            )
            item.text.encode()
        return
    assert isinstance(item, Connect | Send | Recvack | Ping | Disconnect), item
    decoder = FrameDecoder(6)
    decoder.feed(encode(item, 6))
    assert decoder.next_frame() == normalize(item, 6)


@FUZZ
@given(REQUESTS, st.booleans())
def test_fuzz_plausible_requests(doc: dict[str, Any], after_connect: bool) -> None:
    check(connected() if after_connect else JsonRpcCodec(), json.dumps(doc))


@FUZZ
@given(JSON, st.booleans())
def test_fuzz_any_json(doc: Any, after_connect: bool) -> None:
    check(connected() if after_connect else JsonRpcCodec(), json.dumps(doc))


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)), st.booleans())
def test_fuzz_any_text_or_bytes(message: str | bytes, after_connect: bool) -> None:
    check(connected() if after_connect else JsonRpcCodec(), message)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_recv_payloads_arrive_whole(payload: bytes) -> None:
    text = JsonRpcCodec().encode(recv_frame(payload))
    assert text is not None
    text.encode()  # valid UTF-8: sendable as a text message
    carried = json.loads(text)["params"]["payload"]
    if isinstance(carried, dict):
        assert text.endswith(',"payload":' + payload.decode() + "}}")
    else:
        assert base64.b64decode(carried) == payload


def has_lone_surrogate(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


@settings(FUZZ, max_examples=200)
@given(st.dictionaries(st.text(max_size=10), JSON, max_size=6))
def test_fuzz_object_payloads_round_trip_as_objects(obj: dict[str, Any]) -> None:
    codec = connected()
    frame = take(codec, request("send", {**GOOD_SEND, "payload": obj}))
    if isinstance(frame, Answer):
        assert frame.reason.startswith("-32602") and has_lone_surrogate(obj)
        return
    assert not has_lone_surrogate(obj)
    assert isinstance(frame, Send)
    out = json.loads(codec.encode(recv_frame(frame.payload)) or "")["params"]["payload"]
    assert out == obj
