"""Message operations end to end on one real node: the HTTP routes, what sync shows after them,
the pushes online WKProto clients get, 400s that name the field, 403 refusals, and expiry and
retention reclaiming stored messages."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from client.wkproto import ReceivedMessage, WKClient, open_client
from launcher.devcluster import NodeProcess
from tests.conftest import Api, eventually, running_node

_ids = itertools.count(1)
RECEIPT = 0x80


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    yield from running_node(tmp_path_factory.mktemp("msgops"))


@pytest.fixture(scope="module")
def api(node: NodeProcess) -> Iterator[Api]:
    client = Api(node.endpoints["http"])
    yield client
    client.http.close()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def new_group(api: Api, n: int = 3) -> tuple[str, list[str]]:
    gid, uids = fresh("g"), [fresh("u") for _ in range(n)]
    for uid in uids:
        api.token(uid, f"tok-{uid}")
    api.ok("/channel", {"channel_id": gid, "channel_type": 2, "subscribers": uids})
    return gid, uids


def send(api: Api, gid: str, sender: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    body = {"channel_id": gid, "channel_type": 2, "from_uid": sender, "payload": b64(text)}
    result: dict[str, Any] = api.ok("/message/send", {**body, **extra})
    return result


def sync(api: Api, gid: str, viewer: str, ctype: int = 2) -> list[dict[str, Any]]:
    page = api.ok(
        "/channel/messagesync",
        {"login_uid": viewer, "channel_id": gid, "channel_type": ctype, "limit": 100},
    )
    messages: list[dict[str, Any]] = page["messages"]
    return messages


def refused(api: Api, path: str, body: dict[str, Any], status: int, *words: str) -> None:
    resp = api.post(path, body)
    assert resp.status_code == status, resp.text
    msg = resp.json()["msg"]
    for word in words:
        assert word in msg, (word, msg)


def json_object(payload: bytes) -> dict[str, Any]:
    """The payload as a JSON object, or an empty one when it is plain text."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def listen(
    node: NodeProcess, uid: str, action: Callable[[], Any], want: Callable[[Any], bool]
) -> ReceivedMessage:
    """Connect ``uid`` over WKProto, run ``action`` (blocking HTTP) and return the first
    received message whose JSON payload satisfies ``want``."""
    host, port = node.endpoints["tcp"].rsplit(":", 1)

    async def main() -> ReceivedMessage:
        client: WKClient
        async with open_client(host, int(port), uid=uid, token=f"tok-{uid}") as client:
            await trio.to_thread.run_sync(action)
            return await client.recv_where(lambda got: want(json_object(got.payload)))

    return trio.run(main)


# --- revoke ---------------------------------------------------------------------------------


def test_revoke_tombstones_notifies_and_is_idempotent(node: NodeProcess, api: Api) -> None:
    gid, (alice, bob, _) = new_group(api)
    sent = send(api, gid, alice, "oops")
    body = {
        "channel_id": gid,
        "channel_type": 2,
        "from_uid": alice,
        "message_id": sent["message_idstr"],
    }
    first: dict[str, Any] = {}

    def revoke() -> None:
        first.update(api.ok("/message/revoke", body))

    notice = listen(node, bob, revoke, lambda p: p.get("type") == 1006)
    payload = json.loads(notice.payload)
    assert payload["message_id"] == sent["message_idstr"] and payload["message_seq"] == 1
    assert payload["extra"] == [{"uid": alice}] and notice.from_uid == ""
    assert first["revoker"] == alice and first["message_seq"] == 1
    assert api.ok("/message/revoke", body) == first  # twice: same answer...
    msgs = sync(api, gid, bob)
    assert [m["message_seq"] for m in msgs] == [1, 2]  # ...and one notice
    assert msgs[0]["revoke"] == 1 and msgs[0]["revoker"] == alice and msgs[0]["payload"] == ""
    assert msgs[1]["header"]["red_dot"] == 0 and msgs[1]["from_uid"] == ""


def test_revoke_refusals_and_admin(api: Api) -> None:
    gid, (alice, bob, _) = new_group(api)
    send(api, gid, alice)
    body = {"channel_id": gid, "channel_type": 2, "from_uid": bob, "message_seq": 1}
    refused(api, "/message/revoke", body, 403, "sender")
    refused(api, "/message/revoke", {**body, "message_seq": 77}, 404, "77")
    assert api.ok("/message/revoke", {**body, "admin": 1})["revoker"] == bob


def test_revoke_in_a_person_channel(api: Api) -> None:
    a, b = fresh("p"), fresh("p")
    api.ok(
        "/message/send", {"channel_id": b, "channel_type": 1, "from_uid": a, "payload": b64("x")}
    )
    api.ok("/message/revoke", {"channel_id": b, "channel_type": 1, "from_uid": a, "message_seq": 1})
    seen = sync(api, a, b, ctype=1)
    assert seen[0]["revoke"] == 1 and seen[0]["channel_id"] == a
    assert json.loads(base64.b64decode(seen[1]["payload"]))["type"] == 1006


# --- edit -----------------------------------------------------------------------------------


def test_edit_versions_push_and_revoked_refusal(node: NodeProcess, api: Api) -> None:
    gid, (alice, bob, _) = new_group(api)
    send(api, gid, alice, "draft")
    body = {"channel_id": gid, "channel_type": 2, "from_uid": alice, "message_seq": 1}
    answers: list[dict[str, Any]] = []

    def edit() -> None:
        answers.append(api.ok("/message/edit", {**body, "payload": b64("final")}))

    push = listen(node, bob, edit, lambda p: p.get("cmd") == "messageModified")
    assert json.loads(push.payload)["param"] == {
        "channel_id": gid,
        "channel_type": 2,
        "message_id": str(answers[0]["message_id"]),
        "message_seq": 1,
        "version": 1,
    }
    assert api.ok("/message/edit", {**body, "payload": b64("final2")})["version"] == 2
    (m,) = sync(api, gid, bob)
    assert base64.b64decode(m["payload"]) == b"final2" and m["edited"] == 2 and m["edited_at"]
    refused(api, "/message/edit", {**body, "from_uid": bob, "payload": b64("x")}, 403, "sender")
    api.ok("/message/revoke", body)
    refused(api, "/message/edit", {**body, "payload": b64("x")}, 403, "revoked")


# --- delete for one user ----------------------------------------------------------------------


def test_delete_for_one_user(node: NodeProcess, api: Api) -> None:
    gid, (alice, bob, carol) = new_group(api)
    for i in range(3):
        send(api, gid, alice, f"m{i}")
    body = {"uid": bob, "channel_id": gid, "channel_type": 2, "message_seqs": [1, 3]}
    push = listen(
        node,
        bob,
        lambda: api.ok("/message/delete", body),
        lambda p: p.get("cmd") == "messageDeleted",
    )
    assert json.loads(push.payload)["param"]["message_seqs"] == [1, 3]
    assert [m["message_seq"] for m in sync(api, gid, bob)] == [2]
    assert [m["message_seq"] for m in sync(api, gid, carol)] == [1, 2, 3]


# --- read receipts -----------------------------------------------------------------------------


def test_read_receipts(node: NodeProcess, api: Api) -> None:
    gid, (alice, bob, carol) = new_group(api)
    send(api, gid, alice, "read me", setting=RECEIPT)
    send(api, gid, alice, "no receipt")
    readed = {"uid": bob, "channel_id": gid, "channel_type": 2, "message_seqs": [1, 2]}
    push = listen(
        node,
        alice,
        lambda: api.ok("/message/readed", readed),
        lambda p: p.get("cmd") == "messageReceipt",
    )
    param = json.loads(push.payload)["param"]
    assert param["message_seq"] == 1 and param["read_count"] == 1 and param["reader"] == bob
    query = f"/message/receipt?channel_id={gid}&channel_type=2&message_seq=1&login_uid={alice}"
    got = api.http.get(query).json()
    assert (got["read_count"], got["unread_count"], got["readers"]) == (1, 1, [bob])
    api.ok("/message/readed", {**readed, "uid": carol})
    got = api.http.get(query).json()
    assert (got["read_count"], got["unread_count"]) == (2, 0)
    assert api.http.get(query.replace("message_seq=1", "message_seq=2")).json()["read_count"] == 0
    assert api.http.get(query.replace("message_seq=1", "message_seq=9")).status_code == 404


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/message/revoke", {"channel_id": "g", "channel_type": 2, "from_uid": "u"}, "message_seq"),
        ("/message/revoke", {"channel_type": 2, "from_uid": "u", "message_seq": 1}, "channel_id"),
        (
            "/message/revoke",
            {"channel_id": "g", "channel_type": 99, "from_uid": "u"},
            "channel_type",
        ),
        ("/message/revoke", {"channel_id": "g", "channel_type": 2, "message_seq": 1}, "from_uid"),
        (
            "/message/revoke",
            {"channel_id": "g", "channel_type": 2, "from_uid": "u", "message_id": "x1"},
            "message_id",
        ),
        (
            "/message/revoke",
            {"channel_id": "g", "channel_type": 2, "from_uid": "u", "message_seq": 1, "admin": 5},
            "admin",
        ),
        (
            "/message/edit",
            {
                "channel_id": "g",
                "channel_type": 2,
                "from_uid": "u",
                "message_seq": 1,
                "payload": "%",
            },
            "payload",
        ),
        ("/message/delete", {"uid": "u", "channel_id": "g", "channel_type": 2}, "message_seqs"),
        (
            "/message/readed",
            {"uid": "u", "channel_id": "g", "channel_type": 2, "message_seqs": [0]},
            "message_seqs",
        ),
        (
            "/channel/retention",
            {"channel_id": "g", "channel_type": 2, "retention_days": "7"},
            "retention_days",
        ),
        ("/channel/messages_delete", {"channel_id": "g", "channel_type": 2}, "max_message_seq"),
    ],
)
def test_bad_input_is_400_naming_the_field(
    api: Api, path: str, body: dict[str, Any], field: str
) -> None:
    refused(api, path, body, 400, field)


def test_bad_receipt_query_is_400(api: Api) -> None:
    resp = api.http.get("/message/receipt?channel_id=g&channel_type=2&message_seq=x")
    assert resp.status_code == 400 and "message_seq" in resp.json()["msg"]


# --- deletion, expiry, retention -----------------------------------------------------------------


def stored_channels(api: Api) -> set[str]:
    """Channels with at least one message key in this node's store (``/cluster/digest`` scans
    the store itself)."""
    digest = api.http.get("/cluster/digest").json()
    return {name for g in digest["groups"] for name in g["channels"]}


def test_messages_delete_keeps_seqs(api: Api) -> None:
    gid, (alice, bob, _) = new_group(api)
    for i in range(4):
        send(api, gid, alice, f"m{i}")
    done = api.ok(
        "/channel/messages_delete", {"channel_id": gid, "channel_type": 2, "max_message_seq": 3}
    )
    assert done["deleted_to_seq"] == 3
    assert [m["message_seq"] for m in sync(api, gid, bob)] == [4]
    # Deleted messages no longer count as unread.
    rows = api.ok("/conversation/sync", {"uid": bob, "msg_count": 1})
    assert [r["unread"] for r in rows if r["channel_id"] == gid] == [1]
    assert send(api, gid, alice)["message_seq"] == 5  # seqs are never reused


def test_expired_message_vanishes_and_its_keys_are_reclaimed(api: Api) -> None:
    gid, (alice, bob, _) = new_group(api)
    send(api, gid, alice, "short-lived", expire=2)  # seconds: room for the check below
    assert f"2:{gid}" in stored_channels(api)
    eventually(lambda: sync(api, gid, bob) == [], what="the expired message leaves sync")
    eventually(lambda: f"2:{gid}" not in stored_channels(api), what="its key leaves the store")
    assert api.http.get(f"/channel/max_message_seq?channel_id={gid}&channel_type=2").json() == {
        "message_seq": 1
    }


def test_channel_retention_deletes_old_messages(api: Api) -> None:
    gid, (alice, bob, _) = new_group(api)
    send(api, gid, alice, "old")
    assert f"2:{gid}" in stored_channels(api)
    # 0.00004 days = 3.5 s: room for the check above on a loaded machine.
    api.ok("/channel/retention", {"channel_id": gid, "channel_type": 2, "retention_days": 0.00004})
    eventually(lambda: f"2:{gid}" not in stored_channels(api), what="retention reclaims it")
    assert sync(api, gid, bob) == []
