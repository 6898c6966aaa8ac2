"""``/message/import`` on a three-node cluster: a batch imported through a node that does not
lead the channel's slot group is read back through the others with its senders, times and seqs
in order; nobody online is pushed anything, no webhook fires, no unread count moves; a second
import of the same batch stores nothing; bad input is refused with a 4xx naming the field."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from client.wkproto import open_client
from node.channels import person_channel_id
from tests.conftest import Api, Cluster
from tests.integration.test_webhooks import Receiver, notified


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Receiver]]:
    receiver = Receiver()
    cluster = Cluster(Path(tmp_path_factory.mktemp("import3")), 3, webhook__url=receiver.url)
    cluster.start()
    try:
        yield cluster, receiver
    finally:
        cluster.stop()
        receiver.close()


def b64(text: str) -> str:
    return base64.b64encode(json.dumps({"type": 1, "content": text}).encode()).decode()


def spread(cluster: Cluster, key: str) -> tuple[int, int, int]:
    """(writer, reader, third) node ids: the first two do not lead the slot group owning
    ``key``, the third does."""
    leader = cluster.leader_of_key(key, via=1)
    writer, reader = (i for i in sorted(cluster.nodes) if i != leader)
    return writer, reader, leader


def history(start_s: int, *senders: str, prefix: str = "h") -> list[dict[str, Any]]:
    return [
        {
            "from_uid": sender,
            "client_msg_no": f"{prefix}{i}",
            "timestamp": start_s + 60 * i,
            "payload": b64(f"{prefix}{i}"),
        }
        for i, sender in enumerate(senders)
    ]


def sync(api: Api, uid: str, cid: str, ctype: int = 2) -> list[dict[str, Any]]:
    body = {"login_uid": uid, "channel_id": cid, "channel_type": ctype, "limit": 100}
    messages: list[dict[str, Any]] = api.ok("/channel/messagesync", body)["messages"]
    return messages


def conversation(api: Api, uid: str, cid: str) -> dict[str, Any]:
    rows = api.ok("/conversation/sync", {"uid": uid, "msg_count": 10})
    (row,) = (r for r in rows if r["channel_id"] == cid)
    return dict(row)


def test_imported_history_is_stored_in_order_and_pushed_to_no_one(
    hooked: tuple[Cluster, Receiver],
) -> None:
    cluster, receiver = hooked
    gid, alice, bob = "hist-g", "alice-i", "bob-i"
    nodes = spread(cluster, gid)
    writer, reader, third = (cluster.api(i) for i in nodes)
    writer.token(bob, "tok-bob")
    writer.ok("/channel", {"channel_id": gid, "channel_type": 2, "subscribers": [alice, bob]})
    week_ago = int(time.time()) - 7 * 86_400
    # carol is not a member (any more): her history is still imported; "" is the system.
    batch = history(week_ago, alice, "carol-i", "", prefix="hist-")
    live = {"from_uid": alice, "channel_id": gid, "channel_type": 2}
    host, port = cluster.tcp(nodes[1])  # bob is on the reader's node

    async def main() -> tuple[list[dict[str, Any]], dict[str, Any], int]:
        async with open_client(host, port, uid=bob, token="tok-bob") as client:
            before = await trio.to_thread.run_sync(
                writer.ok, "/message/send", {**live, "payload": b64("before")}
            )
            got = await client.recv()
            assert got.message_seq == before["message_seq"] == 1
            body = {"channel_id": gid, "channel_type": 2, "messages": batch}
            answer = await trio.to_thread.run_sync(writer.ok, "/message/import", body)
            # A PING answered after the import answered: nothing was pushed before the PONG.
            await client.ping()
            assert client.pending_messages() == 0
            # Nor later: the next live message is the next RECV, with the seq after the import.
            after = await trio.to_thread.run_sync(
                writer.ok, "/message/send", {**live, "payload": b64("after")}
            )
            got = await client.recv()
            assert got.message_seq == after["message_seq"] == 5
            return answer["messages"], after, before["message_id"]

    imported, after, before_id = trio.run(main)
    assert [m["message_seq"] for m in imported] == [2, 3, 4]
    assert [m["client_msg_no"] for m in imported] == [m["client_msg_no"] for m in batch]
    assert all(m["duplicate"] == 0 for m in imported)
    ids = [m["message_id"] for m in imported]
    assert before_id < ids[0] < ids[1] < ids[2] < after["message_id"]

    # Read back through the two other nodes: senders and times as given, seqs in order.
    for api in (reader, third):
        messages = sync(api, bob, gid)
        assert [m["message_seq"] for m in messages] == [1, 2, 3, 4, 5]
        assert [(m["from_uid"], m["timestamp"], m["client_msg_no"]) for m in messages[1:4]] == [
            (alice, week_ago, "hist-0"),
            ("carol-i", week_ago + 60, "hist-1"),
            ("", week_ago + 120, "hist-2"),
        ]
        # bob's unread: "before" and "after", never the history in between.
        row = conversation(api, bob, gid)
        assert (row["unread"], row["last_msg_seq"]) == (2, 5)
        assert [m["message_seq"] for m in row["recents"]] == [1, 2, 3, 4, 5]

    # Importing the same batch again, through another node, stores nothing new.
    again = third.ok("/message/import", {"channel_id": gid, "channel_type": 2, "messages": batch})
    assert [(m["message_id"], m["message_seq"]) for m in again["messages"]] == [
        (m["message_id"], m["message_seq"]) for m in imported
    ]
    assert all(m["duplicate"] == 1 for m in again["messages"])
    head = reader.http.get(
        "/channel/max_message_seq", params={"channel_id": gid, "channel_type": 2}
    )
    assert head.json() == {"message_seq": 5}

    # Webhooks: "after" is notified; the imported messages never are.
    receiver.wait_for(lambda hits: after["message_id"] in notified(hits))
    assert not set(ids) & notified(receiver.snapshot()).keys()


def test_person_history_shows_in_both_conversations(hooked: tuple[Cluster, Receiver]) -> None:
    cluster, _ = hooked
    dan, eve = "dan-i", "eve-i"
    writer, reader, third = (cluster.api(i) for i in spread(cluster, person_channel_id(dan, eve)))
    start = int(time.time()) - 30 * 86_400
    body = {
        "login_uid": dan,
        "channel_id": eve,
        "channel_type": 1,
        "messages": history(start, dan, eve, dan, prefix="dm-"),
    }
    answer = writer.ok("/message/import", body)
    assert [m["message_seq"] for m in answer["messages"]] == [1, 2, 3]
    for api in (reader, third):
        for uid, peer in ((dan, eve), (eve, dan)):
            row = conversation(api, uid, peer)
            assert (row["unread"], row["mention"], row["last_msg_seq"]) == (0, 0, 3)
            assert row["timestamp"] == start + 120  # the last message's original time
            assert [m["from_uid"] for m in row["recents"]] == [dan, eve, dan]
        assert [m["timestamp"] for m in sync(api, eve, dan, 1)] == [start, start + 60, start + 120]


def test_bad_imports_are_refused_naming_the_field(hooked: tuple[Cluster, Receiver]) -> None:
    cluster, _ = hooked
    api = cluster.api(2)
    api.ok("/channel", {"channel_id": "hist-bad", "channel_type": 2, "subscribers": ["a"]})
    now = int(time.time())
    ok = history(now - 3600, "a")[0]
    group = {"channel_id": "hist-bad", "channel_type": 2}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**group}, 400, "messages"),
        ({**group, "messages": []}, 400, "messages"),
        ({**group, "messages": [ok] * 1001}, 400, "more than 1000"),
        ({**group, "messages": [ok, "x"]}, 400, "messages[1] must be an object"),
        ({**group, "messages": [{**ok, "client_msg_no": ""}]}, 400, "client_msg_no"),
        ({**group, "messages": [{**ok, "timestamp": now + 3600}]}, 400, "messages[0].timestamp"),
        ({**group, "messages": [{**ok, "timestamp": "1"}]}, 400, "messages[0].timestamp"),
        ({**group, "messages": [{**ok, "payload": "%%"}]}, 400, "messages[0].payload"),
        ({**group, "messages": [{**ok, "from_uid": "a b"}]}, 400, "messages[0].from_uid"),
        ({**group, "messages": [{**ok, "expire": 60}]}, 400, "messages[0].expire"),
        (
            {**group, "messages": [{**ok, "header": {"sync_once": 1}}]},
            400,
            "messages[0].header",
        ),
        ({"channel_id": "t", "channel_type": 9, "messages": [ok]}, 400, "channel_type"),
        ({"channel_id": "b", "channel_type": 1, "messages": [ok]}, 400, "login_uid"),
        (
            {
                "login_uid": "a",
                "channel_id": "b",
                "channel_type": 1,
                "messages": [{**ok, "from_uid": "c"}],
            },
            400,
            "messages[0].from_uid",
        ),
        ({"channel_id": "hist-none", "channel_type": 2, "messages": [ok]}, 404, ""),
    ]
    for body, status, words in cases:
        resp = api.post("/message/import", body)
        assert resp.status_code == status, (body, resp.text)
        assert words in resp.json()["msg"], (body, resp.json())
    head = api.http.get("/channel/max_message_seq", params=group)
    assert head.json() == {"message_seq": 0}  # nothing of it was stored
