"""The official WuKongIM JS SDK (npm wukongimjssdk 1.0.4, unmodified) against a real node.

Two SDK instances, A and B, connect over WebSocket with encryption on (the SDK always encrypts).
A sends a text to B and to a group holding both; B must receive both with the right content and
A must see successful SENDACKs with ``message_seq > 0``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.devcluster import NodeProcess
from tests.conftest import Api, fresh_host, running_node, start_node
from tests.tlsutil import TestCA, tls_settings

pytestmark = pytest.mark.e2e

HARNESS = Path(__file__).parent / "jssdk"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the module's tests on defaults: each has users and channels of its own."""
    yield from running_node(tmp_path_factory.mktemp("jssdk"))


def run_scenario(
    spec: dict[str, Any], timeout_s: float = 90, env: dict[str, str] | None = None
) -> dict[str, Any]:
    node_bin = shutil.which("node")
    assert node_bin, "Node.js is required for the SDK test (make test installs everything)"
    assert (HARNESS / "node_modules" / "wukongimjssdk").is_dir(), (
        "run `make test` (it runs npm ci in tests/e2e/jssdk)"
    )
    proc = subprocess.run(
        [node_bin, "--import", "./register.mjs", "scenario.mjs", json.dumps(spec)],
        cwd=HARNESS,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=None if env is None else {**os.environ, **env},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the SDK harness:\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert proc.returncode == 0 and result.get("ok"), (result, proc.stderr[-3000:])
    return result


def test_sdk_person_and_group_messages(node: NodeProcess, api: Api) -> None:
    api.token("alice", "alice-token", device_flag=1)
    api.token("bob", "bob-token", device_flag=1)
    api.ok("/channel", {"channel_id": "room1", "channel_type": 2, "subscribers": ["alice", "bob"]})

    result = run_scenario(
        {
            "ws_url": node.endpoints["ws"],
            "a": {"uid": "alice", "token": "alice-token"},
            "b": {"uid": "bob", "token": "bob-token"},
            "group_id": "room1",
            "person_text": "hello bob",
            "group_text": "hello room",
            "timeout_ms": 30000,
            "sdk_log": False,
        }
    )

    acks = result["a_acks"]
    assert [a["channel_type"] for a in acks] == [1, 2]
    assert all(a["reason_code"] == 1 and a["message_seq"] > 0 for a in acks), acks
    by_no = {m["client_msg_no"]: m for m in result["b_received"]}
    person, group = (by_no[a["client_msg_no"]] for a in acks)
    # B sees the person channel under the peer's uid, as WuKongIM clients expect.
    assert (person["channel_id"], person["channel_type"], person["from_uid"]) == (
        "alice",
        1,
        "alice",
    )
    assert person["content"] == "hello bob"
    assert (group["channel_id"], group["channel_type"], group["from_uid"]) == ("room1", 2, "alice")
    assert group["content"] == "hello room"
    assert person["message_seq"] == acks[0]["message_seq"]
    assert group["message_seq"] == acks[1]["message_seq"]
    assert not result["errors"], result["errors"]


def test_sdk_conversation_sync_and_revoke(node: NodeProcess, api: Api) -> None:
    """B reads, goes offline, misses messages, reconnects: the SDK's own conversation sync (fed
    by /conversation/sync through the provider callback an app writes) shows the right unread
    counts and latest messages. Then A's revoke reaches B online as a 1006 system message."""
    api.token("carol", "carol-token", device_flag=1)
    api.token("dave", "dave-token", device_flag=1)
    api.ok("/channel", {"channel_id": "room2", "channel_type": 2, "subscribers": ["carol", "dave"]})

    def send(text: str, to: str, channel_type: int) -> dict[str, Any]:
        return {
            "op": "send",
            "from": "a",
            "channel_id": to,
            "channel_type": channel_type,
            "text": text,
        }

    result = run_scenario(
        {
            "ws_url": node.endpoints["ws"],
            "http_url": node.endpoints["http"],
            "a": {"uid": "carol", "token": "carol-token"},
            "b": {"uid": "dave", "token": "dave-token"},
            "timeout_ms": 45000,
            "sdk_log": False,
            "steps": [
                send("p1", "dave", 1),  # 0
                send("g1", "room2", 2),  # 1
                {"op": "wait_recv", "who": "b", "steps": [0, 1]},  # 2
                # Dave opens the person chat: the app marks it read.
                {
                    "op": "http",
                    "path": "/conversations/clearUnread",
                    "body": {"uid": "dave", "channel_id": "carol", "channel_type": 1},
                    "expect_status": 200,
                },  # 3
                {"op": "disconnect", "who": "b"},  # 4
                send("p2", "dave", 1),  # 5
                send("p3", "dave", 1),  # 6
                send("g2", "room2", 2),  # 7
                {"op": "wait_acks"},  # 8
                {"op": "connect", "who": "b"},  # 9
                {"op": "sync_conversations", "who": "b", "msg_count": 20},  # 10
                {
                    "op": "http",
                    "path": "/message/revoke",
                    "body": {
                        "from_uid": "carol",
                        "channel_id": "dave",
                        "channel_type": 1,
                        "message_seq": "$ack:6:message_seq",
                    },
                    "expect_status": 200,
                    "save": "revoke",
                },  # 11
                {"op": "wait_recv_type", "who": "b", "content_type": 1006},  # 12
            ],
        }
    )
    convs = {(c["channel_id"], c["channel_type"]): c for c in result["conversations"]["b"]}
    person, group = convs[("carol", 1)], convs[("room2", 2)]
    # p1 was read before going offline; p2 and p3 were missed.
    assert person["unread"] == 2, person
    assert (person["last_text"], person["last_msg_seq"]) == ("p3", 3), person
    assert group["unread"] == 2, group
    assert (group["last_text"], group["last_msg_seq"]) == ("g2", 2), group

    p3_id = next(a["message_id"] for a in result["acks"]["a"] if a["message_seq"] == 3)
    notices = [r for r in result["b_received"] if r["content_type"] == 1006]
    assert notices and notices[0]["content"]["message_id"] == p3_id, notices
    assert not result["errors"], result["errors"]


def test_sdk_over_wss_with_a_ca_made_by_the_test(tmp_path: Path) -> None:
    """The unmodified SDK over ``wss://`` (the address ``/route`` gives as ``wss_addr``): Node
    trusts the test's CA through ``NODE_EXTRA_CA_CERTS`` and checks the node's IP SAN; the
    conversation sync's ``fetch`` goes to the HTTPS API the same way."""
    host = fresh_host()
    ca = TestCA(tmp_path / "ca")
    node = start_node(
        tmp_path, host=host, **tls_settings(ca.issue("node", ips=[host]), http__tls=True)
    )
    try:
        api = Api(node.endpoints["http"], ca_file=ca.ca_file)
        api.token("alice", "alice-token", device_flag=1)
        api.token("bob", "bob-token", device_flag=1)
        api.ok(
            "/channel", {"channel_id": "room1", "channel_type": 2, "subscribers": ["alice", "bob"]}
        )
        wss = api.http.get("/route", params={"uid": "alice"}).json()["wss_addr"]
        assert wss == f"wss://{host}:5210"
        extra_ca = {"NODE_EXTRA_CA_CERTS": str(ca.ca_file)}
        result = run_scenario(
            {
                "ws_url": wss,
                "http_url": node.endpoints["http"],
                "a": {"uid": "alice", "token": "alice-token"},
                "b": {"uid": "bob", "token": "bob-token"},
                "timeout_ms": 30000,
                "sdk_log": False,
                "steps": [
                    {
                        "op": "send",
                        "from": "a",
                        "channel_id": "bob",
                        "channel_type": 1,
                        "text": "p",
                    },
                    {
                        "op": "send",
                        "from": "a",
                        "channel_id": "room1",
                        "channel_type": 2,
                        "text": "g",
                    },
                    {"op": "wait_recv", "who": "b", "steps": [0, 1]},
                    {"op": "sync_conversations", "who": "b", "msg_count": 20},
                ],
            },
            env=extra_ca,
        )
        received = {(m["channel_id"], m["content"]) for m in result["received"]["b"]}
        assert received == {("alice", "p"), ("room1", "g")}
        convs = {(c["channel_id"], c["channel_type"]) for c in result["conversations"]["b"]}
        assert convs == {("alice", 1), ("room1", 2)}
        assert not result["errors"], result["errors"]
        api.http.close()
    finally:
        node.stop()
