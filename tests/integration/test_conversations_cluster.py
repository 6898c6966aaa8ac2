"""Conversations and lookups on a three-node cluster: a user's rows live in the slot groups of
their channels (spread over the nodes), the list is gathered from every group, and every node
answers every request."""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.conftest import Api, Cluster


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
