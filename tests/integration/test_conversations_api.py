"""Message lookups, conversation sync and the /conversations/* operations over HTTP, against one
real node process (shared by the module: every test uses its own uids and channels)."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from client.wkproto import open_client
from launcher.devcluster import NodeProcess
from tests.conftest import Api, start_node

_n = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_n)}"


@pytest.fixture(scope="module")
def conv_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("convs"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(conv_node: NodeProcess) -> Iterator[Api]:
    client = Api(conv_node.endpoints["http"])
    yield client
    client.http.close()


def send(
    api: Api, from_uid: str, channel_id: str, channel_type: int, body: Any = None, **kw: Any
) -> dict[str, Any]:
    payload = base64.b64encode(json.dumps(body or {"type": 1, "content": "hi"}).encode())
    return dict(
        api.ok(
            "/message/send",
            {
                "from_uid": from_uid,
                "channel_id": channel_id,
                "channel_type": channel_type,
                "payload": payload.decode(),
                **kw,
            },
        )
    )


def group(api: Api, members: list[str]) -> str:
    gid = fresh("g")
    api.ok("/channel", {"channel_id": gid, "channel_type": 2, "subscribers": members})
    return gid


def sync(api: Api, uid: str, **kw: Any) -> list[dict[str, Any]]:
    return list(api.ok("/conversation/sync", {"uid": uid, **kw}))


def bad(api: Api, path: str, body: Any, field: str) -> None:
    resp = api.post(path, body)
    assert resp.status_code == 400, (path, resp.status_code, resp.text)
    assert resp.json()["status"] == 400 and field in resp.json()["msg"], resp.text


# --- lookups ----------------------------------------------------------------------------------


def test_lookups_by_id_client_msg_no_and_last(api: Api) -> None:
    a, b = fresh("a"), fresh("b")
    first = send(api, a, b, 1, client_msg_no="n-1")
    second = send(api, b, a, 1)
    got = api.ok("/messages", {"message_ids": [second["message_id"], 1, str(first["message_id"])]})
    assert [m["message_seq"] for m in got] == [2, 1]
    one = api.ok("/message", {"message_id": first["message_id"], "login_uid": b})
    assert (one["client_msg_no"], one["channel_id"], one["from_uid"]) == ("n-1", a, a)
    missing = api.post("/message", {"message_id": first["message_id"] + 1})
    assert (missing.status_code, missing.json()) == (404, {"status": 404})

    q = {"channel_id": b, "channel_type": 1, "from_uid": a, "client_msg_no": "n-1"}
    by_no = api.http.get("/message/byclientmsgno", params=q)
    assert by_no.status_code == 200 and by_no.json()["message_id"] == first["message_id"]
    q["client_msg_no"] = "nope"
    assert api.http.get("/message/byclientmsgno", params=q).status_code == 404

    last = api.http.get(
        "/channel/last_message", params={"channel_id": a, "channel_type": 1, "login_uid": b}
    )
    assert last.status_code == 200
    assert (last.json()["message_seq"], last.json()["channel_id"]) == (2, a)


def test_lookup_bad_input_names_the_field(api: Api) -> None:
    bad(api, "/messages", {}, "message_ids")
    bad(api, "/messages", {"message_ids": ["x"]}, "message_ids")
    bad(api, "/messages", {"message_ids": [1], "login_uid": "a b"}, "login_uid")
    bad(api, "/message", {"message_id": True}, "message_id")
    bad(api, "/message", {}, "message_id")
    resp = api.http.get("/message/byclientmsgno", params={"channel_id": "x", "channel_type": "z"})
    assert resp.status_code == 400 and "channel_type" in resp.json()["msg"]
    resp = api.http.get(
        "/message/byclientmsgno", params={"channel_id": "x", "channel_type": 2, "from_uid": "a"}
    )
    assert resp.status_code == 400 and "client_msg_no" in resp.json()["msg"]
    resp = api.http.get("/channel/last_message", params={"channel_id": "x", "channel_type": 1})
    assert resp.status_code == 400 and "login_uid" in resp.json()["msg"]


# --- sync and unread ------------------------------------------------------------------------------


def test_sync_lists_conversations_newest_first_with_unread_and_recents(api: Api) -> None:
    a, b, c = fresh("a"), fresh("b"), fresh("c")
    gid = group(api, [a, b, c])
    for _ in range(3):
        send(api, a, gid, 2)
    send(api, a, gid, 2, header={"red_dot": 0})  # does not count
    send(api, c, b, 1, body={"type": 1, "content": "@b", "mention": {"uids": [b]}})
    convs = sync(api, b, msg_count=2)
    assert [(x["channel_id"], x["channel_type"]) for x in convs] == [(c, 1), (gid, 2)]
    person, grp = convs
    assert (person["unread"], person["mention"], person["last_msg_seq"]) == (1, 1, 1)
    assert (grp["unread"], grp["mention"], grp["last_msg_seq"]) == (3, 0, 4)
    assert [m["message_seq"] for m in grp["recents"]] == [3, 4]
    assert person["recents"][0]["channel_id"] == c  # the peer's uid, from b's view
    # The sender's side: its own messages are read.
    assert [x["unread"] for x in sync(api, a)] == [0]
    # Known seqs: nothing new in the group, so only the person chat comes back.
    assert [x["channel_id"] for x in sync(api, b, last_msg_seqs=f"{gid}:2:4")] == [c]
    assert [x["channel_type"] for x in sync(api, b, exclude_channel_types=[1])] == [2]
    paged = sync(api, b, page=2, page_size=1)
    assert [x["channel_id"] for x in paged] == [gid]


def test_clear_set_delete_and_clear_messages(api: Api) -> None:
    a, b = fresh("a"), fresh("b")
    gid = group(api, [a, b])
    for _ in range(4):
        send(api, a, gid, 2)
    where = {"uid": b, "channel_id": gid, "channel_type": 2}
    api.ok("/conversations/clearUnread", {**where, "message_seq": 3})
    [conv] = sync(api, b)
    assert (conv["unread"], conv["readed_to_msg_seq"]) == (1, 3)
    api.ok("/conversations/setUnread", {**where, "unread": 5})
    assert sync(api, b)[0]["unread"] == 5
    api.ok("/conversations/clearUnread", where)
    assert sync(api, b)[0]["unread"] == 0
    assert sync(api, b, only_unread=1) == []

    api.ok("/conversations/clearMessages", {**where, "message_seq": 2})
    assert [m["message_seq"] for m in sync(api, b)[0]["recents"]] == [3, 4]
    api.ok("/conversations/delete", where)
    assert sync(api, b) == []
    send(api, a, gid, 2)
    [conv] = sync(api, b)
    assert (conv["unread"], [m["message_seq"] for m in conv["recents"]]) == (1, [5])


def test_peer_read_and_unread_clear_command(api: Api, conv_node: NodeProcess) -> None:
    a, b = fresh("a"), fresh("b")
    api.token(b, f"tok-{b}")
    send(api, a, b, 1)
    send(api, a, b, 1)
    peer = api.http.get("/conversations/peerRead", params={"uid": a, "channel_id": b})
    assert peer.json()["readed_to_msg_seq"] == 0
    host, port = conv_node.endpoints["tcp"].rsplit(":", 1)

    async def scenario() -> None:
        async with open_client(host, int(port), uid=b, token=f"tok-{b}") as cb:
            await trio.to_thread.run_sync(
                api.ok,
                "/conversations/clearUnread",
                {"uid": b, "channel_id": a, "channel_type": 1},
            )
            # The two messages from a may still be pushed: b connected right after them.
            msg = await cb.recv_where(lambda m: m.from_uid != a)
            assert (msg.channel_id, msg.message_seq, msg.from_uid) == (b, 0, "")
            doc = json.loads(msg.payload)
            assert doc == {
                "type": 99,
                "cmd": "unreadClear",
                "param": {"channel_id": a, "channel_type": 1},
            }

    trio.run(scenario)
    peer = api.http.get("/conversations/peerRead", params={"uid": a, "channel_id": b})
    assert (peer.status_code, peer.json()["readed_to_msg_seq"]) == (200, 2)


def test_conversation_bad_input_names_the_field(api: Api) -> None:
    bad(api, "/conversation/sync", {}, "uid")
    bad(api, "/conversation/sync", {"uid": "u", "msg_count": "x"}, "msg_count")
    bad(api, "/conversation/sync", {"uid": "u", "last_msg_seqs": "a:b"}, "last_msg_seqs")
    bad(api, "/conversation/sync", {"uid": "u", "exclude_channel_types": [True]}, "exclude")
    bad(api, "/conversation/sync", {"uid": "u", "page_size": 0}, "page_size")
    where = {"uid": "u", "channel_id": "g", "channel_type": 2}
    bad(api, "/conversations/setUnread", where, "unread")
    bad(api, "/conversations/setUnread", {**where, "unread": -1}, "unread")
    bad(api, "/conversations/clearUnread", {**where, "message_seq": "1"}, "message_seq")
    bad(api, "/conversations/delete", {**where, "channel_type": 9}, "channel_type")
    bad(api, "/conversations/clearMessages", {"channel_id": "g", "channel_type": 2}, "uid")
    resp = api.http.get("/conversations/peerRead", params={"uid": "u", "channel_id": "g#"})
    assert resp.status_code == 400 and "channel_id" in resp.json()["msg"]
