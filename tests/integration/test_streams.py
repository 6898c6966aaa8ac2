"""Stream messages end to end on one real node: an anchor sent with ``is_stream``, events
appended with ``/message/event``, EVENT frames to protocol-5+ sessions only, paging with
``/message/eventsync``, the folded snapshot in history, idempotent event ids, closed lanes, and
the older wire form (protocol 2-4: ``stream_no`` in SEND and RECV). The payload conventions
(types 1-8, 99, > 1000) are checked here too, on both the HTTP and the WKProto path."""

from __future__ import annotations

import base64
import functools
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from client.wkproto import WKClient, open_client
from launcher.devcluster import NodeProcess
from proto.wkproto import Event, HeaderFlag, ReasonCode, Send, Setting
from tests.conftest import Api, running_node

_ids = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    yield from running_node(tmp_path_factory.mktemp("streams"))


@pytest.fixture(scope="module")
def api(node: NodeProcess) -> Iterator[Api]:
    client = Api(node.endpoints["http"])
    yield client
    client.http.close()


def b64(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.b64encode(raw).decode()


def new_group(api: Api, n: int = 3) -> tuple[str, list[str]]:
    gid, uids = fresh("sg"), [fresh("su") for _ in range(n)]
    for uid in uids:
        api.token(uid, f"tok-{uid}")
    api.ok("/channel", {"channel_id": gid, "channel_type": 2, "subscribers": uids})
    return gid, uids


def anchor(api: Api, gid: str, sender: str, client_msg_no: str) -> dict[str, Any]:
    body = {
        "channel_id": gid,
        "channel_type": 2,
        "from_uid": sender,
        "client_msg_no": client_msg_no,
        "is_stream": 1,
        "payload": b64({"type": 1, "content": ""}),
    }
    result: dict[str, Any] = api.ok("/message/send", body)
    return result


def event(
    api: Api, gid: str, sender: str, cmn: str, event_id: str, etype: str, **extra: Any
) -> Any:
    body = {
        "channel_id": gid,
        "channel_type": 2,
        "from_uid": sender,
        "client_msg_no": cmn,
        "event_id": event_id,
        "event_type": etype,
        **extra,
    }
    return api.post("/message/event", body)


def test_events_reach_protocol_5_sessions_only_and_fold_into_history(
    node: NodeProcess, api: Api
) -> None:
    gid, (bot, reader, old) = new_group(api)
    host, port = node.endpoints["tcp"].rsplit(":", 1)
    cmn = fresh("stream-")
    seen: dict[str, list[Event]] = {}

    async def main() -> None:
        async with (
            open_client(host, int(port), uid=reader, token=f"tok-{reader}", version=5) as v5,
            open_client(host, int(port), uid=old, token=f"tok-{old}", version=2) as v2,
        ):
            sent = await trio.to_thread.run_sync(anchor, api, gid, bot, cmn)
            for client in (v5, v2):
                first = await client.recv()
                assert first.message_seq == sent["message_seq"]
                # The anchor's STREAM bit carries no wire fields here: not announced.
                assert not first.setting & Setting.STREAM
            for n, (etype, extra) in enumerate(
                [
                    ("stream.delta", {"payload": {"delta": "Hel"}}),
                    ("stream.delta", {"payload": {"delta": "lo"}}),
                    ("stream.delta", {"event_key": "thinking", "payload": {"delta": "hmm"}}),
                    ("stream.finish", {}),
                ],
                start=1,
            ):
                resp = await trio.to_thread.run_sync(
                    functools.partial(event, api, gid, bot, cmn, f"e{n}", etype, **extra)
                )
                assert resp.status_code == 200, resp.text
                assert resp.json()["msg_event_seq"] == n
            # A plain message after the events: both sessions see it after whatever EVENTs
            # were queued before it (one queue and one writer per session).
            await trio.to_thread.run_sync(
                lambda: api.ok(
                    "/message/send",
                    {
                        "channel_id": gid,
                        "channel_type": 2,
                        "from_uid": bot,
                        "payload": b64({"type": 1, "content": "after"}),
                    },
                )
            )
            for name, client in (("v5", v5), ("v2", v2)):
                after = await client.recv()
                assert json.loads(after.payload)["content"] == "after"
                seen[name] = [f for f in client.other_frames if isinstance(f, Event)]

    trio.run(main)
    assert seen["v2"] == []  # SDK 1.0.4's decoder throws on EVENT: never sent below v5
    events = seen["v5"]
    assert [e.type for e in events] == ["stream.delta"] * 3 + ["stream.finish"]
    assert [e.id for e in events] == ["e1", "e2", "e3", "e4"]
    data = [json.loads(e.data) for e in events]
    assert [d["msg_event_seq"] for d in data] == [1, 2, 3, 4]
    assert [d["event_key"] for d in data] == ["main", "main", "thinking", "main"]
    assert data[0]["payload"] == {"delta": "Hel"}
    assert data[0]["channel_id"] == gid and data[0]["client_msg_no"] == cmn
    assert data[3]["stream_status"] == "finished"

    history = api.ok(
        "/channel/messagesync",
        {"login_uid": reader, "channel_id": gid, "channel_type": 2, "limit": 10},
    )["messages"]
    meta = next(m for m in history if m["client_msg_no"] == cmn)["event_meta"]
    lanes = {lane["event_key"]: lane for lane in meta["lanes"]}
    assert meta["last_msg_event_seq"] == 4
    assert lanes["main"]["snapshot"] == "Hello" and lanes["main"]["stream_status"] == "finished"
    assert lanes["thinking"]["snapshot"] == "hmm" and lanes["thinking"]["stream_status"] == "open"
    assert all("event_meta" not in m for m in history if m["client_msg_no"] != cmn)


def test_eventsync_pages_filters_and_survives_a_restart(node: NodeProcess, api: Api) -> None:
    gid, (bot, reader, _) = new_group(api)
    cmn = fresh("stream-")
    anchor(api, gid, bot, cmn)
    for n in range(1, 6):
        key = "main" if n % 2 else "aside"
        resp = event(
            api, gid, bot, cmn, f"p{n}", "stream.delta", event_key=key, payload={"delta": str(n)}
        )
        assert resp.status_code == 200, resp.text
    private = event(
        api, gid, bot, cmn, "secret", "stream.delta", visibility="private", payload={"delta": "x"}
    )
    assert private.status_code == 200, private.text

    def page(**extra: Any) -> dict[str, Any]:
        body = {
            "channel_id": gid,
            "channel_type": 2,
            "from_uid": bot,
            "client_msg_no": cmn,
            "login_uid": reader,
            **extra,
        }
        result: dict[str, Any] = api.ok("/message/eventsync", body)
        return result

    first = page(limit=2)
    assert [e["msg_event_seq"] for e in first["events"]] == [1, 2] and first["more"] == 1
    rest = page(from_msg_event_seq=first["next_msg_event_seq"], limit=10)
    assert [e["msg_event_seq"] for e in rest["events"]] == [3, 4, 5] and rest["more"] == 0
    assert [e["msg_event_seq"] for e in page(event_key="aside")["events"]] == [2, 4]
    # Private events stay out of pages unless asked for, and out of the public snapshot.
    assert [e["event_id"] for e in page(include_private=1, from_msg_event_seq=6)["events"]] == [
        "secret"
    ]
    lanes = {lane["event_key"]: lane for lane in rest["event_meta"]["lanes"]}
    assert lanes["main"]["snapshot"] == "135" and lanes["aside"]["snapshot"] == "24"

    node.stop()
    node.start()
    again = page(limit=10)
    assert [e["event_id"] for e in again["events"]] == ["p1", "p2", "p3", "p4", "p5"]


def test_event_ids_are_idempotent_and_closed_lanes_refuse(api: Api) -> None:
    gid, (bot, _, _) = new_group(api)
    cmn = fresh("stream-")
    anchor(api, gid, bot, cmn)
    one = event(api, gid, bot, cmn, "d1", "stream.delta", payload={"delta": "a"})
    again = event(api, gid, bot, cmn, "d1", "stream.delta", payload={"delta": "a"})
    assert one.status_code == again.status_code == 200
    assert again.json()["msg_event_seq"] == one.json()["msg_event_seq"] == 1
    assert again.json()["duplicate"] == 1
    assert event(api, gid, bot, cmn, "end", "stream.cancel").json()["stream_status"] == "cancelled"
    late = event(api, gid, bot, cmn, "d2", "stream.delta", payload={"delta": "b"})
    assert late.status_code == 409 and "cancelled" in late.json()["msg"]
    # Another lane of the same message is still open.
    other = event(api, gid, bot, cmn, "d3", "stream.delta", event_key="k2", payload={"delta": "c"})
    assert other.status_code == 200 and other.json()["msg_event_seq"] == 3


@pytest.mark.parametrize(
    ("change", "status", "word"),
    [
        ({"event_type": "stream.bogus"}, 400, "event_type"),
        ({"event_id": None}, 400, "event_id"),
        ({"client_msg_no": None}, 400, "client_msg_no"),
        ({"payload": {"text": "no delta"}}, 400, "payload.delta"),
        ({"payload": [1]}, 400, "payload"),
        ({"visibility": "restricted"}, 400, "visibility"),
        ({"event_key": "a@b"}, 400, "event_key"),
        ({"channel_type": 77}, 400, "channel_type"),
        ({"client_msg_no": "no-such-anchor"}, 404, "anchor"),
    ],
)
def test_event_bad_input(api: Api, change: dict[str, Any], status: int, word: str) -> None:
    gid, (bot,) = new_group(api, 1)
    cmn = fresh("stream-")
    anchor(api, gid, bot, cmn)
    body = {
        "channel_id": gid,
        "channel_type": 2,
        "from_uid": bot,
        "client_msg_no": cmn,
        "event_id": "x1",
        "event_type": "stream.delta",
        "payload": {"delta": "hi"},
    }
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    resp = api.post("/message/event", body)
    assert resp.status_code == status, resp.text
    assert word in resp.json()["msg"]


def test_events_need_a_stream_anchor(api: Api) -> None:
    gid, (bot,) = new_group(api, 1)
    plain = {
        "channel_id": gid,
        "channel_type": 2,
        "from_uid": bot,
        "client_msg_no": "plain-1",
        "payload": b64({"type": 1, "content": "not a stream"}),
    }
    api.ok("/message/send", plain)
    resp = event(api, gid, bot, "plain-1", "x", "stream.delta", payload={"delta": "a"})
    assert resp.status_code == 409 and "is_stream" in resp.json()["msg"]
    resp = api.post("/message/eventsync", {"channel_id": gid, "channel_type": 2})
    assert resp.status_code == 400 and "client_msg_no" in resp.json()["msg"]


def test_protocol_4_stream_fields_travel_in_send_and_recv(node: NodeProcess, api: Api) -> None:
    """Before protocol 5, a stream is a series of messages sharing a ``stream_no``: the SEND's
    fields are stored and come back in RECV to v2-4 sessions, never to v5+ ones."""
    a, b, c = fresh("sa"), fresh("sb"), fresh("sc")
    for uid in (a, b, c):
        api.token(uid, f"tok-{uid}")
    gid = fresh("sg")
    api.ok("/channel", {"channel_id": gid, "channel_type": 2, "subscribers": [a, b, c]})
    host, port = node.endpoints["tcp"].rsplit(":", 1)
    got: dict[str, Any] = {}

    async def main() -> None:
        async with (
            open_client(host, int(port), uid=a, token=f"tok-{a}", version=4) as pa,
            open_client(host, int(port), uid=b, token=f"tok-{b}", version=4) as pb,
            open_client(host, int(port), uid=c, token=f"tok-{c}", version=6) as pc,
        ):
            ack = await _send_stream(pa, gid, "s-001")
            assert ack == ReasonCode.SUCCESS
            got["v4"] = (await pb.recv()).recv
            got["v6"] = (await pc.recv()).recv

    trio.run(main)
    assert got["v4"].stream_no == "s-001" and got["v4"].setting & Setting.STREAM
    assert got["v6"].stream_no == "" and got["v6"].payload  # no stream fields on v5+


async def _send_stream(client: WKClient, gid: str, stream_no: str) -> int:
    frame = Send(
        setting=int(Setting.STREAM | Setting.NO_ENCRYPT),
        client_seq=client.next_client_seq(),
        client_msg_no=fresh("cmn"),
        channel_id=gid,
        channel_type=2,
        payload=json.dumps({"type": 1, "content": "part"}).encode(),
        stream_no=stream_no,
        flags=int(HeaderFlag.RED_DOT),
    )
    waiter = client._expect_sendack(frame.client_seq)
    await client.send_frame(frame)
    ack = await client._wait(waiter)
    return int(ack.reason_code)


# --- payload conventions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "word"),
    [
        ({"type": 1}, "content"),
        ({"type": 2, "width": 10}, "url"),
        ({"type": 3, "url": "u", "height": "tall"}, "height"),
        ({"type": 4, "url": "u"}, "timeTrad"),
        ({"type": 8, "url": "u", "size": "big"}, "size"),
        ({"type": 99}, "cmd"),
        ({"type": 1, "content": "x", "mention": {"uids": "everyone"}}, "mention.uids"),
        ({"type": 1, "content": "x", "mention": {"all": 2}}, "mention.all"),
        ({"type": 1, "content": "x", "reply": "quote"}, "reply"),
    ],
)
def test_http_sends_keep_the_payload_conventions(
    api: Api, payload: dict[str, Any], word: str
) -> None:
    gid, (sender, _, _) = new_group(api)
    body = {"channel_id": gid, "channel_type": 2, "from_uid": sender, "payload": b64(payload)}
    resp = api.post("/message/send", body)
    assert resp.status_code == 400, resp.text
    assert "payload" in resp.json()["msg"] and word in resp.json()["msg"]


def test_opaque_and_unlisted_payloads_pass(api: Api) -> None:
    gid, (sender, _, _) = new_group(api)
    for payload in (b"\x00\x01binary", b'{"no":"type"}', json.dumps({"type": 6, "x": 1}).encode()):
        body = {"channel_id": gid, "channel_type": 2, "from_uid": sender, "payload": b64(payload)}
        assert api.post("/message/send", body).status_code == 200


def test_system_types_get_their_recommended_flags(api: Api) -> None:
    """Without a header, a group notice (1001-1009) is sync_once and a kicked notice (1010)
    raises the red dot; an explicit header wins."""
    gid, (member, _, _) = new_group(api)
    notice = {"type": 1002, "content": "{0} joined", "extra": [{"uid": member, "name": "M"}]}
    base = {"channel_id": gid, "channel_type": 2, "payload": b64(notice)}
    api.ok("/message/send", base)
    api.ok("/message/send", {**base, "header": {"red_dot": 1}})
    kicked = {"type": 1010, "content": "You were removed by {0}", "extra": []}
    api.ok("/message/send", {**base, "payload": b64(kicked)})
    history = api.ok(
        "/channel/messagesync",
        {"login_uid": member, "channel_id": gid, "channel_type": 2, "limit": 10},
    )["messages"]
    # The sync_once notice went to the command twin, not into the channel's history.
    assert [json.loads(base64.b64decode(m["payload"]))["type"] for m in history] == [1002, 1010]
    assert [m["header"]["red_dot"] for m in history] == [1, 1]
    assert all(m["header"]["sync_once"] == 0 for m in history)
    queued = api.ok("/message/sync", {"uid": member, "limit": 10})
    assert [json.loads(base64.b64decode(m["payload"]))["type"] for m in queued] == [1002]


def test_wkproto_sends_keep_the_conventions_and_leave_system_types_to_the_api(
    node: NodeProcess, api: Api
) -> None:
    gid, (sender, _, _) = new_group(api)
    host, port = node.endpoints["tcp"].rsplit(":", 1)
    codes: list[int] = []

    async def main() -> None:
        async with open_client(host, int(port), uid=sender, token=f"tok-{sender}") as c:
            for payload in (
                b'{"type": 1, "content": "fine"}',
                b'{"type": 1, "text": "no content"}',
                b'{"type": 1001, "content": "forged notice"}',
                # Too deep, or a number too long, for the server to read: refused, not passed
                # as opaque (a client would still read the forged system type).
                b'{"type": 1, "content": "x", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                b'{"type": 1001, "content": "forged", "n": ' + b"9" * 5000 + b"}",
            ):
                result = await c.send(gid, 2, payload)
                codes.append(result.reason_code)
            # The session survived all of it.
            assert (await c.send(gid, 2, b"still here")).reason_code == ReasonCode.SUCCESS

    trio.run(main)
    assert codes == [
        ReasonCode.SUCCESS,
        ReasonCode.PAYLOAD_DECODE_ERROR,
        ReasonCode.NOT_ALLOW_SEND,
        ReasonCode.PAYLOAD_DECODE_ERROR,
        ReasonCode.PAYLOAD_DECODE_ERROR,
    ]
    assert "Traceback" not in node.log_path.read_text()
