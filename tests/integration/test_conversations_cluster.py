"""Conversations and lookups on a three-node cluster: a user's rows live in the slot groups of
their channels (spread over the nodes), the list is gathered from every group, and every node
answers every request.

One cluster serves the module: each test has users and channels of its own."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from tests.conftest import Api, Cluster, eventually


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("convcluster"), 3) as c:
        yield c


def send(api: Api, from_uid: str, channel_id: str, channel_type: int) -> dict[str, Any]:
    payload = base64.b64encode(json.dumps({"type": 1, "content": "x"}).encode()).decode()
    body = {
        "from_uid": from_uid,
        "channel_id": channel_id,
        "channel_type": channel_type,
        "payload": payload,
    }
    return dict(api.ok("/message/send", body))


def test_conversations_across_three_nodes(cluster3: Cluster) -> None:
    apis = {i: cluster3.api(i) for i in (1, 2, 3)}
    slot_groups = set(cluster3.status(1)["slot_table"])
    # With one slot group this test would prove nothing about the scatter-gather.
    assert len(slot_groups) > 1, slot_groups

    # Enough channels that they land in several slot groups; each created and fed via a
    # different node.
    channels = [f"cg{i}" for i in range(8)]
    sent: dict[str, list[int]] = {}
    for i, cid in enumerate(channels):
        api = apis[1 + i % 3]
        api.ok("/channel", {"channel_id": cid, "channel_type": 2, "subscribers": ["ann", "bo"]})
        sent[cid] = [send(api, "ann", cid, 2)["message_id"] for _ in range(1 + i % 2)]
    peers = ["p1", "p2", "p3"]
    for i, peer in enumerate(peers):
        send(apis[1 + i], peer, "bo", 1)

    expected = {(cid, 2): 1 + i % 2 for i, cid in enumerate(channels)}
    expected.update({(p, 1): 1 for p in peers})
    for api in apis.values():
        rows = api.ok("/conversation/sync", {"uid": "bo", "msg_count": 1})
        assert {(r["channel_id"], r["channel_type"]): r["unread"] for r in rows} == expected
        stamps = [r["timestamp"] for r in rows]
        assert stamps == sorted(stamps, reverse=True)

    # Lookups by id go to the group named in the id, from any node.
    ids = [mid for mids in sent.values() for mid in mids]
    for api in apis.values():
        got = api.ok("/messages", {"message_ids": ids, "login_uid": "bo"})
        assert [m["message_id"] for m in got] == ids

    # An operation through one node is seen through the others.
    apis[3].ok("/conversations/clearUnread", {"uid": "bo", "channel_id": "cg1", "channel_type": 2})
    apis[2].ok("/conversations/delete", {"uid": "bo", "channel_id": "p1", "channel_type": 1})
    rows = apis[1].ok("/conversation/sync", {"uid": "bo", "msg_count": 0})
    by_key = {(r["channel_id"], r["channel_type"]): r for r in rows}
    assert by_key[("cg1", 2)]["unread"] == 0
    assert ("p1", 1) not in by_key
    peer = apis[2].http.get("/conversations/peerRead", params={"uid": "p2", "channel_id": "bo"})
    assert peer.json()["readed_to_msg_seq"] == 0


def test_mention_follows_its_message_across_nodes(cluster3: Cluster) -> None:
    """ "@me" clears when the message that mentioned the user is deleted for everyone, expires,
    or goes with retention; a later mention that is still there keeps it. Writes go through
    one node, conversation syncs through the two others."""
    writer, readers = cluster3.api(1), [cluster3.api(2), cluster3.api(3)]

    def mention_send(cid: str, **extra: Any) -> int:
        payload = {"type": 1, "content": "@bea", "mention": {"uids": ["bea"]}}
        body = {
            "from_uid": "ada",
            "channel_id": cid,
            "channel_type": 2,
            "payload": base64.b64encode(json.dumps(payload).encode()).decode(),
            **extra,
        }
        return int(writer.ok("/message/send", body)["message_seq"])

    def marks_via(api: Api) -> dict[str, tuple[int, int]]:
        rows = api.ok("/conversation/sync", {"uid": "bea", "msg_count": 0})
        return {r["channel_id"]: (r["mention"], r["unread"]) for r in rows}

    def marks() -> dict[str, tuple[int, int]]:
        """(mention, unread) per channel, the same through both readers."""
        first, second = (marks_via(api) for api in readers)
        assert first == second
        return first

    for cid in ("m-del", "m-exp", "m-ret"):
        writer.ok("/channel", {"channel_id": cid, "channel_type": 2, "subscribers": ["ada", "bea"]})
    mention_send("m-del")
    mention_send("m-del")
    send(writer, "ada", "m-del", 2)
    mention_send("m-exp", expire=1)
    send(writer, "ada", "m-exp", 2)
    mention_send("m-ret")
    assert marks() == {"m-del": (1, 3), "m-exp": (1, 2), "m-ret": (1, 1)}

    # Deleting the first mention leaves the second: still "@me". Deleting both clears it.
    readers[0].ok(
        "/channel/messages_delete", {"channel_id": "m-del", "channel_type": 2, "max_message_seq": 1}
    )
    assert marks()["m-del"] == (1, 2)
    readers[1].ok(
        "/channel/messages_delete", {"channel_id": "m-del", "channel_type": 2, "max_message_seq": 2}
    )
    assert marks()["m-del"] == (0, 1)

    # Expiry (1 s) and retention (about 9 ms; the leader's reclaim pass runs every second)
    # take the mentioning messages with them: there is no event to wait for but time.
    writer.ok(
        "/channel/retention", {"channel_id": "m-ret", "channel_type": 2, "retention_days": 1e-7}
    )

    def cleared(api: Api) -> bool:
        now = marks_via(api)
        return now["m-exp"][0] == 0 and now["m-ret"][0] == 0

    for api in readers:
        eventually(partial(cleared, api), what="expiry and retention clearing the mention")
    assert marks()["m-exp"] == (0, 2)  # expired messages count until read past (unread rule)
