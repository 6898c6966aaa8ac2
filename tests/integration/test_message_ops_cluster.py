"""Revoke across a three-node cluster: a message sent through node 1, revoked through node 2,
is seen revoked by a sync on node 3, and a WKProto client on node 3 gets the 1006 notice."""

from __future__ import annotations

import base64
import json

import trio

from client.wkproto import open_client
from tests.conftest import Cluster


def test_revoke_across_nodes(cluster3: Cluster) -> None:
    api1, api2, api3 = cluster3.api(1), cluster3.api(2), cluster3.api(3)
    alice, bob = "alice-x", "bob-x"
    for uid in (alice, bob):
        api1.token(uid, f"tok-{uid}")
    api1.ok("/channel", {"channel_id": "team", "channel_type": 2, "subscribers": [alice, bob]})
    sent = api1.ok(
        "/message/send",
        {
            "channel_id": "team",
            "channel_type": 2,
            "from_uid": alice,
            "payload": base64.b64encode(b"take this back").decode(),
        },
    )
    host, port = cluster3.tcp(3)

    async def main() -> dict[str, object]:
        async with open_client(host, port, uid=bob, token=f"tok-{bob}") as client:
            body = {
                "channel_id": "team",
                "channel_type": 2,
                "from_uid": alice,
                "message_id": sent["message_idstr"],
            }
            await trio.to_thread.run_sync(api2.ok, "/message/revoke", body)
            # The message itself may still be pushed: bob connected right after its commit.
            got = await client.recv_where(lambda m: m.message_seq > sent["message_seq"])
            notice: dict[str, object] = json.loads(got.payload)
            return notice

    notice = trio.run(main)
    assert notice["type"] == 1006 and notice["message_id"] == sent["message_idstr"]
    page = api3.ok(
        "/channel/messagesync",
        {"login_uid": bob, "channel_id": "team", "channel_type": 2, "limit": 10},
    )
    first, second = page["messages"]
    assert first["message_seq"] == sent["message_seq"]
    assert (first["revoke"], first["revoker"], first["payload"]) == (1, alice, "")
    assert json.loads(base64.b64decode(second["payload"]))["type"] == 1006
