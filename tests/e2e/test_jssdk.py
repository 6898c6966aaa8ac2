"""The official WuKongIM JS SDK (npm wukongimjssdk 1.0.4, unmodified) against a real node.

Two SDK instances, A and B, connect over WebSocket with encryption on (the SDK always encrypts).
A sends a text to B and to a group holding both; B must receive both with the right content and
A must see successful SENDACKs with ``message_seq > 0``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from node.devcluster import NodeProcess
from tests.conftest import Api

pytestmark = pytest.mark.e2e

HARNESS = Path(__file__).parent / "jssdk"


def run_scenario(spec: dict[str, Any], timeout_s: float = 90) -> dict[str, Any]:
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
