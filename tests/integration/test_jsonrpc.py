"""JSON-RPC 2.0 on the WebSocket port, end to end: a real node process, real WebSockets with
text (and binary) messages, WKProto clients on the same node; and a JSON-RPC user and a WKProto
user messaging each other across a three-node cluster.

Every refusal test ends by checking that the node still serves the sessions that were open and
new ones (``assert_unaffected``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from client.wkproto import WKClient, open_client
from launcher.devcluster import NodeProcess
from proto.wkproto import ReasonCode
from tests.conftest import Api, Cluster, start_node
from tests.jsonrpc_client import JsonRpcClient, b64, open_jsonrpc

_uids = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_uids)}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    # Encryption on (the default): JSON-RPC sessions must be clear all the same.
    proc = start_node(tmp_path_factory.mktemp("jsonrpc"))
    yield proc
    proc.stop()


def ws_addr(node: NodeProcess) -> tuple[str, int]:
    host, port = node.endpoints["ws"].removeprefix("ws://").rsplit(":", 1)
    return host, int(port)


def tcp_addr(node: NodeProcess) -> tuple[str, int]:
    host, port = node.endpoints["tcp"].rsplit(":", 1)
    return host, int(port)


def users(node: NodeProcess, *prefixes: str, device_flag: int = 1) -> list[str]:
    api = Api(node.endpoints["http"])
    out = []
    for prefix in prefixes:
        uid = fresh(prefix)
        api.token(uid, f"tok-{uid}", device_flag=device_flag)
        out.append(uid)
    return out


def login(node: NodeProcess, uid: str, **kw: Any) -> Any:
    return open_jsonrpc(*ws_addr(node), uid=uid, token=f"tok-{uid}", **kw)


def wkproto(node: NodeProcess, uid: str, **kw: Any) -> Any:
    return open_client(*tcp_addr(node), uid=uid, token=f"tok-{uid}", **kw)


async def assert_unaffected(node: NodeProcess, jc: JsonRpcClient, wc: WKClient) -> None:
    """Sessions that were open before keep working both ways, and a new one logs in."""
    assert node.running
    sent = await jc.send(wc.uid, 1, {"type": 1, "content": "still here"})
    assert sent["reasonCode"] == ReasonCode.SUCCESS
    got = await wc.recv()
    assert json.loads(got.payload) == {"type": 1, "content": "still here"}
    back = await wc.send(jc.uid, 1, b'{"type":1,"content":"me too"}')
    assert back.ok
    assert (await jc.recv())["payload"] == {"type": 1, "content": "me too"}
    (c,) = users(node, "late")
    async with login(node, c) as late:
        assert "result" in await late.request("ping")


@asynccontextmanager
async def bystanders(node: NodeProcess) -> AsyncIterator[tuple[JsonRpcClient, WKClient]]:
    """A JSON-RPC session and a WKProto session that must survive a hostile neighbour."""
    j, w = users(node, "calmj", "calmw")
    async with login(node, j) as jc, wkproto(node, w, device_flag=1) as wc:
        yield jc, wc


# --- the happy path on one node -------------------------------------------------------------


def test_connect_send_recv_ping_with_a_wkproto_user(node: NodeProcess) -> None:
    a, b = users(node, "ja", "wb")

    async def main() -> None:
        async with login(node, a) as ja, wkproto(node, b, device_flag=1) as wb:
            pong = await ja.request("ping", {}, request_id="p-1")
            assert pong == {"jsonrpc": "2.0", "id": "p-1", "result": {}}
            sent = await ja.send(
                b,
                1,
                {"type": 1, "content": "hello"},
                clientMsgNo="c-1",
                header={"redDot": True, "noPersist": False},
                setting={"receipt": True},
                topic="news",
                expire=3600,
            )
            assert sent["reasonCode"] == ReasonCode.SUCCESS
            assert sent["messageSeq"] == 1 and sent["clientMsgNo"] == "c-1"
            assert sent["header"] == {"redDot": True}
            got = await wb.recv()
            assert got.payload == b'{"type":1,"content":"hello"}'
            assert (got.from_uid, got.channel_id, got.client_msg_no) == (a, a, "c-1")
            assert str(got.message_id) == sent["messageId"]
            assert got.flags == 0x02 and got.setting & 0x80 and got.setting & 0x08
            assert (got.topic, got.expire) == ("news", 3600)
            back = await wb.send(a, 1, b'{"type":1,"content":"hi yourself"}', topic="t")
            recv = await ja.recv()
            assert recv["payload"] == {"type": 1, "content": "hi yourself"}
            assert recv["messageId"] == str(back.message_id)
            assert (recv["messageSeq"], recv["fromUid"], recv["channelId"]) == (2, b, b)
            assert recv["channelType"] == 1 and isinstance(recv["timestamp"], int)
            assert recv["header"] == {"redDot": True} and "msgKey" not in recv
            assert (recv["topic"], recv["setting"]) == ("t", {"topic": True})
            await ja.notify(
                "recvack", {"messageId": recv["messageId"], "messageSeq": recv["messageSeq"]}
            )
            assert "result" in await ja.request("ping")  # the recvack was taken quietly

    trio.run(main)


def test_connect_result_has_no_keys_even_with_encryption_on(node: NodeProcess) -> None:
    (a,) = users(node, "keys")

    async def main() -> None:
        async with open_jsonrpc(*ws_addr(node)) as c:
            answer = await c.request(
                "connect", {"uid": a, "token": f"tok-{a}", "deviceFlag": 1, "clientKey": "x"}
            )
            result = answer["result"]
            assert result["reasonCode"] == ReasonCode.SUCCESS
            assert (result["serverKey"], result["salt"]) == ("", "")
            assert result["nodeId"] == 1 and result["serverVersion"] == 6
            assert isinstance(result["timeDiff"], int)

    trio.run(main)


def test_payload_as_object_and_as_base64_arrive_intact_at_wkproto(node: NodeProcess) -> None:
    a, b = users(node, "ja", "wb")
    binary = bytes(range(256))

    async def main() -> None:
        async with login(node, a) as ja, wkproto(node, b, device_flag=1) as wb:
            obj = {"type": 1, "content": "héllo ✓", "n": [1, 2.5, None, True]}
            assert (await ja.send(b, 1, obj))["reasonCode"] == ReasonCode.SUCCESS
            got = await wb.recv()
            assert (
                got.payload == json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
            )
            assert (await ja.send(b, 1, b64(binary)))["reasonCode"] == ReasonCode.SUCCESS
            assert (await wb.recv()).payload == binary
            # What a WKProto client sends comes back to JSON-RPC as it was stored: a JSON
            # object as that object, byte for byte; anything else as base64.
            await wb.send(a, 1, b'{"type":1,  "content":"spaced"}')
            await wb.send(a, 1, binary)
            await wb.send(a, 1, b"[1,2]")
            first, second, third = [await ja.recv() for _ in range(3)]
            raw = [m for m in ja.received if isinstance(m, str) and '"spaced"' in m]
            assert raw and '"payload":{"type":1,  "content":"spaced"}}' in raw[0]
            assert first["payload"] == {"type": 1, "content": "spaced"}
            assert second["payload"] == b64(binary)
            assert third["payload"] == b64(b"[1,2]")

    trio.run(main)


def test_binary_messages_are_json_rpc_too(node: NodeProcess) -> None:
    """The iOS EasySDK (Starscream ``write(data:)``) sends JSON in binary messages."""
    (a,) = users(node, "bin")

    async def main() -> None:
        async with open_jsonrpc(*ws_addr(node)) as c:
            answer = await c.request(
                "connect", {"uid": a, "token": f"tok-{a}", "deviceFlag": 1}, binary=True
            )
            assert answer["result"]["reasonCode"] == ReasonCode.SUCCESS
            assert (await c.request("ping", binary=True))["result"] == {}
            assert all(isinstance(m, str) for m in c.received)  # answers are text

    trio.run(main)


def test_group_send_and_send_failures_carry_reason_codes(node: NodeProcess) -> None:
    a, b, outsider = users(node, "ja", "wb", "out")
    gid = fresh("g")
    Api(node.endpoints["http"]).ok(
        "/channel", {"channel_id": gid, "channel_type": 2, "subscribers": [a, b]}
    )

    async def main() -> None:
        async with login(node, a) as ja, wkproto(node, b, device_flag=1) as wb:
            ok = await ja.send(gid, 2, {"type": 1, "content": "to all"})
            assert ok["reasonCode"] == ReasonCode.SUCCESS
            got = await wb.recv()
            assert (got.channel_id, got.channel_type) == (gid, 2)
            await wb.send(gid, 2, b'{"type":1,"content":"back"}')
            recv = await ja.recv()
            assert (recv["channelId"], recv["channelType"], recv["fromUid"]) == (gid, 2, b)
            # The send path after decoding is WKProto's: its checks answer with reason codes.
            not_member = await ja.send(fresh("nog"), 2, {"type": 1, "content": "x"})
            assert not_member["reasonCode"] == ReasonCode.SUBSCRIBER_NOT_EXIST
            assert (not_member["messageId"], not_member["messageSeq"]) == ("0", 0)
            bad_channel = await ja.send("a#b", 1, {"type": 1, "content": "x"})
            assert bad_channel["reasonCode"] == ReasonCode.CHANNEL_ID_ERROR
            long_no = await ja.send(b, 1, {"type": 1, "content": "x"}, clientMsgNo="n" * 200)
            assert long_no["reasonCode"] == ReasonCode.PAYLOAD_DECODE_ERROR
            broken = await ja.send(b, 1, {"type": 1})  # a text without content
            assert broken["reasonCode"] == ReasonCode.PAYLOAD_DECODE_ERROR
            big = await ja.send(b, 1, b64(b"x" * 20_000))
            assert big["reasonCode"] == ReasonCode.PAYLOAD_DECODE_ERROR
            assert outsider  # registered but never online: a send to it is stored
            assert (await ja.send(outsider, 1, {"type": 1, "content": "later"}))["reasonCode"] == 1

    trio.run(main)


def test_kick_arrives_as_a_disconnect_notification(node: NodeProcess) -> None:
    # APP allows one session per user: a second APP login kicks the first with ConnectKick.
    (a,) = users(node, "kick", device_flag=0)

    async def main() -> None:
        async with (
            login(node, a, device_flag=0, device_id="phone-1") as first,
            login(node, a, device_flag=0, device_id="phone-2"),
        ):
            notice = await first.notification("disconnect")
            assert notice["reasonCode"] == ReasonCode.CONNECT_KICK
            assert notice["reason"] == "login in other device"
            await first.wait_closed()

    trio.run(main)


def test_stream_events_arrive_as_event_notifications(node: NodeProcess) -> None:
    api = Api(node.endpoints["http"])
    (reader,) = users(node, "reader")
    gid, cmn = fresh("sg"), fresh("stream-")
    api.ok("/channel", {"channel_id": gid, "channel_type": 2, "subscribers": ["bot", reader]})
    common = {"channel_id": gid, "channel_type": 2, "from_uid": "bot", "client_msg_no": cmn}

    async def main() -> None:
        async with login(node, reader) as jr:
            anchor = {**common, "is_stream": 1, "payload": b64(b'{"type":1,"content":""}')}
            await trio.to_thread.run_sync(api.ok, "/message/send", anchor)
            assert (await jr.recv())["clientMsgNo"] == cmn
            delta = {**common, "event_id": "e1", "event_type": "stream.delta"}
            delta["payload"] = {"delta": "Hel"}
            await trio.to_thread.run_sync(api.ok, "/message/event", delta)
            event = await jr.notification("event")
            assert (event["id"], event["type"]) == ("e1", "stream.delta")
            assert isinstance(event["timestamp"], int)
            data = json.loads(event["data"])
            assert data["client_msg_no"] == cmn and data["payload"] == {"delta": "Hel"}

    trio.run(main)


# --- refusals -------------------------------------------------------------------------------


def test_bad_token_gets_the_failing_reason_code_then_a_close(node: NodeProcess) -> None:
    (a,) = users(node, "badtok")

    async def main() -> None:
        async with bystanders(node) as (jc, wc), open_jsonrpc(*ws_addr(node)) as c:
            answer = await c.request(
                "connect", {"uid": a, "token": "wrong", "deviceFlag": 1}, request_id="c1"
            )
            assert answer["id"] == "c1"
            assert answer["result"]["reasonCode"] == ReasonCode.AUTH_FAIL
            await c.wait_closed()
            await assert_unaffected(node, jc, wc)

    trio.run(main)


def refused(
    node: NodeProcess, message: str | bytes, code: int, *, login_first: bool = True
) -> dict[str, Any]:
    """Send ``message`` (after a successful connect unless told otherwise); the server must
    answer with error ``code`` and close. Returns the error response."""
    (a,) = users(node, "bad")
    out: dict[str, Any] = {}

    async def main() -> None:
        async with bystanders(node) as (jc, wc):
            kw: dict[str, Any] = {"uid": a, "token": f"tok-{a}"} if login_first else {}
            async with open_jsonrpc(*ws_addr(node), **kw) as c:
                await c.send_raw(message)
                await c.wait_closed()
                errors = [json.loads(m) for m in c.received if '"error"' in str(m)]
                assert len(errors) == 1, c.received
                out.update(errors[0])
            await assert_unaffected(node, jc, wc)

    trio.run(main)
    assert out["error"]["code"] == code, out
    return out


def test_not_json_gets_a_parse_error_and_a_close(node: NodeProcess) -> None:
    answer = refused(node, '{"method": "ping", "id": "x"', -32700)
    assert answer["id"] is None
    refused(node, b'{"method": "\xff"}', -32700)  # not UTF-8
    refused(node, '{"id":"x","method":"ping","params":{"n":NaN}}', -32700)
    refused(node, '{"id":"x","method":"send","params":{"n":' + "9" * 5000 + "}}", -32700)


def test_unknown_method_gets_method_not_found_and_a_close(node: NodeProcess) -> None:
    answer = refused(node, '{"jsonrpc":"2.0","method":"subscribe","id":"s1","params":{}}', -32601)
    assert answer["id"] == "s1"


def test_requests_out_of_order_get_session_state_errors(node: NodeProcess) -> None:
    answer = refused(node, '{"method":"send","id":7,"params":{}}', -32000, login_first=False)
    assert answer["id"] == 7 and "connect" in answer["error"]["message"]
    refused(node, '{"method":"connect","id":"again","params":{"uid":"x"}}', -32000)


def test_batches_responses_and_deep_nesting_are_invalid_requests(node: NodeProcess) -> None:
    refused(node, '[{"method":"ping","id":"1"}]', -32600)
    refused(node, '{"id":"r","result":{}}', -32600)
    refused(node, '{"id":"r","method":"ping","jsonrpc":"1.0"}', -32600)
    refused(node, '{"id":{"no":1},"method":"ping"}', -32600)
    deep = '{"id":"d","method":"send","params":{"payload":' + "[" * 100 + "]" * 100 + "}}"
    refused(node, deep, -32600)
    deeper = '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"
    refused(node, deeper, -32700)


def test_bad_connect_params_close_the_connection(node: NodeProcess) -> None:
    answer = refused(
        node, '{"method":"connect","id":"c","params":{"token":"t"}}', -32602, login_first=False
    )
    assert answer["id"] == "c" and "uid" in answer["error"]["message"]
    refused(
        node,
        '{"method":"connect","id":"c","params":{"uid":"u","deviceFlag":"web"}}',
        -32602,
        login_first=False,
    )


def test_bad_send_params_are_answered_and_the_session_goes_on(node: NodeProcess) -> None:
    a, b = users(node, "ja", "wb")

    async def main() -> None:
        async with login(node, a) as ja, wkproto(node, b, device_flag=1) as wb:
            for params, words in [
                ({"channelType": 1, "payload": {}}, "channelId is required"),
                ({"channelId": b, "channelType": "1", "payload": {}}, "channelType"),
                ({"channelId": b, "channelType": 256, "payload": {}}, "channelType"),
                ({"channelId": b, "channelType": 1, "payload": "not base64!"}, "base64"),
                ({"channelId": b, "channelType": 1, "payload": [1]}, "payload"),
                ({"channelId": b, "channelType": 1}, "payload is required"),
                ({"channelId": b, "channelType": 1, "payload": {}, "header": 1}, "header"),
                ({"channelId": "\udc00", "channelType": 1, "payload": {}}, "Unicode"),
                ({"channelId": "x" * 40_000, "channelType": 1, "payload": {}}, "32767"),
            ]:
                answer = await ja.request("send", params)
                assert answer["error"]["code"] == -32602, (params, answer)
                assert words in answer["error"]["message"], (words, answer)
            # A number beyond a double parses (as infinity) but cannot be stored as JSON text.
            huge = json.dumps({"id": "huge", "method": "send", "params": {"channelId": b}})
            await ja.send_raw(huge[:-2] + ',"channelType":1,"payload":{"f":1e400}}}')
            assert (await ja.response("huge"))["error"]["code"] == -32602
            # A send without an id is a notification: committed, never answered.
            await ja.notify("send", {"channelId": b, "channelType": 1, "payload": {"type": 7}})
            assert json.loads((await wb.recv()).payload) == {"type": 7}
            # A bad recvack (a notification) is not answered either; the session goes on.
            await ja.notify("recvack", {"messageId": "x"})
            ok = await ja.send(b, 1, {"type": 1, "content": "after all that"})
            assert ok["reasonCode"] == ReasonCode.SUCCESS
            assert json.loads((await wb.recv()).payload)["content"] == "after all that"
            assert not [m for m in ja.received if '"error"' in str(m) and '"id":null' in str(m)]

    trio.run(main)


def test_a_deeply_nested_base64_payload_is_answered(node: NodeProcess) -> None:
    """The payload conventions parse a payload that looks like JSON; one nested deeper than
    their limit is refused with its reason code (PayloadDecodeError), not a RecursionError that
    ends the session, and the session goes on."""
    a, b = users(node, "ja", "wb")
    deep = b'{"type":1,"content":"x","a":' + b"[" * 6000 + b"]" * 6000 + b"}"

    async def main() -> None:
        async with login(node, a) as ja, wkproto(node, b, device_flag=1) as wb:
            sent = await ja.send(b, 1, b64(deep))
            assert sent["reasonCode"] == ReasonCode.PAYLOAD_DECODE_ERROR
            assert (await ja.send(b, 1, {"type": 1, "content": "next"}))["reasonCode"] == 1
            assert json.loads((await wb.recv()).payload) == {"type": 1, "content": "next"}

    trio.run(main)


def test_empty_and_whitespace_messages_do_not_end_a_connection(node: NodeProcess) -> None:
    (a,) = users(node, "empty")

    async def main() -> None:
        async with open_jsonrpc(*ws_addr(node)) as c:
            await c.send_raw("")
            await c.send_raw(b"")
            await c.send_raw(" \n")
            answer = await c.request("connect", {"uid": a, "token": f"tok-{a}", "deviceFlag": 1})
            assert answer["result"]["reasonCode"] == ReasonCode.SUCCESS

    trio.run(main)


def test_tcp_does_not_serve_json(node: NodeProcess) -> None:
    async def main() -> None:
        stream = await trio.open_tcp_stream(*tcp_addr(node))
        await stream.send_all(b'{"method":"ping","id":"1"}')
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""  # closed without a JSON answer
        await stream.aclose()

    trio.run(main)


# --- across a cluster -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("jsonrpc-cluster")), 3)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_json_rpc_and_wkproto_users_message_each_other_across_nodes(cluster: Cluster) -> None:
    alice, bob = fresh("alice"), fresh("bob")
    cluster.api(1).token(alice, "ta", device_flag=1)
    cluster.api(2).token(bob, "tb", device_flag=0)
    gid = fresh("room")
    cluster.api(3).ok(
        "/channel", {"channel_id": gid, "channel_type": 2, "subscribers": [alice, bob]}
    )
    binary = bytes(range(255, -1, -1))

    async def main() -> None:
        async with (
            open_jsonrpc(cluster.hosts[1], 5200, uid=alice, token="ta") as a,
            open_client(*cluster.tcp(2), uid=bob, token="tb") as b,
        ):
            # JSON-RPC on node 1 -> WKProto on node 2, person and group, object and base64.
            to_bob = await a.send(bob, 1, {"type": 1, "content": "hi bob"})
            to_room = await a.send(gid, 2, b64(binary))
            assert to_bob["reasonCode"] == to_room["reasonCode"] == ReasonCode.SUCCESS
            got = {m.channel_type: m for m in [await b.recv(), await b.recv()]}
            assert got[1].payload == b'{"type":1,"content":"hi bob"}'
            assert (got[1].channel_id, got[1].from_uid) == (alice, alice)
            assert str(got[1].message_id) == to_bob["messageId"]
            assert got[2].payload == binary and got[2].channel_id == gid
            assert got[2].message_seq == to_room["messageSeq"]
            # WKProto on node 2 -> JSON-RPC on node 1, person and group (encrypted on bob's
            # side, clear on alice's).
            assert b.encrypted
            back = await b.send(alice, 1, b'{"type":1,"content":"hi alice"}')
            room = await b.send(gid, 2, binary)
            recvs = {m["channelType"]: m for m in [await a.recv(), await a.recv()]}
            assert recvs[1]["payload"] == {"type": 1, "content": "hi alice"}
            assert (recvs[1]["channelId"], recvs[1]["fromUid"]) == (bob, bob)
            assert recvs[1]["messageId"] == str(back.message_id)
            assert recvs[2]["payload"] == b64(binary)
            assert (recvs[2]["channelId"], recvs[2]["messageSeq"]) == (gid, room.message_seq)

    trio.run(main)
