"""The ``ack-without-commit`` sabotage with a real node: an acknowledged message that was never
stored, exactly the bug the chaos suite's checkers must catch."""

from __future__ import annotations

import base64
from pathlib import Path

from node.sabotage import FAKE_ACK_EVERY
from tests.conftest import Api, start_node


def test_ack_without_commit_acknowledges_a_message_that_is_lost(tmp_path: Path) -> None:
    # allow__sabotage becomes RAFTCHAT_ALLOW_SABOTAGE=1, the guard variable.
    node = start_node(tmp_path, testing__sabotage="ack-without-commit", allow__sabotage=1)
    api = Api(node.endpoints["http"])
    try:
        acks = []
        for i in range(FAKE_ACK_EVERY + 1):
            body = {
                "from_uid": "alice",
                "channel_id": "bob",
                "channel_type": 1,
                "payload": base64.b64encode(f"m{i}".encode()).decode(),
                "client_msg_no": f"c-{i}",
            }
            acks.append(api.ok("/message/send", body))  # every one answers a plain success
        lost = acks[FAKE_ACK_EVERY - 1]
        assert set(lost) == set(acks[0]) and lost["message_seq"] == FAKE_ACK_EVERY
        page = api.ok(
            "/channel/messagesync",
            {"login_uid": "alice", "channel_id": "bob", "channel_type": 1, "limit": 100},
        )
        stored = [m["client_msg_no"] for m in page["messages"]]
        assert lost["client_msg_no"] not in stored
        assert stored == [f"c-{i}" for i in range(FAKE_ACK_EVERY + 1) if i != FAKE_ACK_EVERY - 1]
        assert "SABOTAGE ACTIVE" in node.log_path.read_text()
    finally:
        api.http.close()
        node.stop()
