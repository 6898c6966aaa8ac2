"""Killing any one node of three loses none of the messaging state: channels, subscribers, deny
and allow lists, conversations, read floors and messages. Each node in turn is killed
with SIGKILL; the other two must answer every read exactly as before; then it comes back."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from tests.conftest import Cluster, eventually


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def snapshot(cluster: Cluster, via: int) -> dict[str, Any]:
    """Everything the test stored, as one node answers it (reads go to the groups' leaders)."""
    api = cluster.api(via)

    def get(path: str, **params: Any) -> Any:
        r = api.http.get(path, params=params)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def sync(login: str, channel_id: str, channel_type: int) -> list[tuple[int, str, str]]:
        page = api.ok(
            "/channel/messagesync",
            {
                "login_uid": login,
                "channel_id": channel_id,
                "channel_type": channel_type,
                "limit": 100,
            },
        )
        return [(m["message_seq"], m["from_uid"], m["payload"]) for m in page["messages"]]

    convs = api.ok("/conversation/sync", {"uid": "uma", "version": 0, "msg_count": 1})
    return {
        "info": get("/channel/info", channel_id="durable", channel_type=2),
        "subscribers": sorted(get("/channel/subscribers", channel_id="durable", channel_type=2)),
        "group_deny": sorted(get("/channel/blacklist", channel_id="durable", channel_type=2)),
        "group_allow": sorted(get("/channel/whitelist", channel_id="durable", channel_type=2)),
        "person_deny": sorted(get("/channel/blacklist", channel_id="uma", channel_type=1)),
        "conversations": sorted(
            (c["channel_id"], c["channel_type"], c["unread"], c["readed_to_msg_seq"]) for c in convs
        ),
        "group_messages": sync("uma", "durable", 2),
        "person_messages": sync("uma", "ivan", 1),
    }


def test_killing_any_one_node_loses_no_messaging_state(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3)
    cluster.start()
    try:
        api = cluster.api(1)
        api.ok(
            "/channel",
            {
                "channel_id": "durable",
                "channel_type": 2,
                "subscribers": ["ivan", "uma", "olga"],
            },
        )
        cluster.api(2).ok(
            "/channel/blacklist_add",
            {"channel_id": "durable", "channel_type": 2, "uids": ["mallory"]},
        )
        cluster.api(3).ok(
            "/channel/whitelist_add",
            {"channel_id": "durable", "channel_type": 2, "uids": ["ivan", "uma", "olga"]},
        )
        cluster.api(1).ok(
            "/channel/blacklist_add", {"channel_id": "uma", "channel_type": 1, "uids": ["spam"]}
        )
        for i in range(1, 6):
            cluster.api(1 + i % 3).ok(
                "/message/send",
                {
                    "from_uid": "ivan",
                    "channel_id": "durable",
                    "channel_type": 2,
                    "payload": b64(f"g{i}"),
                },
            )
        for i in range(1, 4):
            cluster.api(1 + i % 3).ok(
                "/message/send",
                {
                    "from_uid": "ivan",
                    "channel_id": "uma",
                    "channel_type": 1,
                    "payload": b64(f"p{i}"),
                },
            )
        cluster.api(2).ok(
            "/conversations/clearUnread",
            {"uid": "uma", "channel_id": "durable", "channel_type": 2, "message_seq": 3},
        )

        before = snapshot(cluster, 1)
        # The state is what the test wrote, so a snapshot that reads nothing cannot pass.
        assert before["subscribers"] == ["ivan", "olga", "uma"]
        assert before["group_deny"] == ["mallory"] and before["person_deny"] == ["spam"]
        assert len(before["group_messages"]) == 5 and len(before["person_messages"]) == 3
        assert ("durable", 2, 2, 3) in before["conversations"]
        assert ("ivan", 1, 3, 0) in before["conversations"]

        for victim in (1, 2, 3):
            cluster.nodes[victim].kill()
            survivor = 1 + victim % 3
            # None while a group is still electing (503 for a moment).
            eventually(
                lambda v=survivor: snapshot_or_none(cluster, v) == before,
                timeout_s=30,
                what=f"the same state via node {survivor} after killing node {victim}",
            )
            cluster.nodes[victim].start()
            eventually(
                lambda v=victim: snapshot_or_none(cluster, v) == before,
                timeout_s=30,
                what=f"node {victim} serving the same state after its restart",
            )
    finally:
        cluster.stop()


def snapshot_or_none(cluster: Cluster, via: int) -> dict[str, Any] | None:
    try:
        return snapshot(cluster, via)
    except AssertionError:
        return None
