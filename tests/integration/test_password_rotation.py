"""The cluster password changes on a running three-node cluster in three rolling restarts
(``docs/security.md``, "Rotating secrets without downtime"): every restarted node comes back
ready (its groups elect leaders with peers on the other password), writes go on throughout and
nothing acknowledged is lost, and a user token hashed under the old password still logs in
after the old password is gone (it was hashed again at a login in between)."""

from __future__ import annotations

from pathlib import Path

from proto.wkproto import ReasonCode
from tests.conftest import Cluster, eventually
from tests.integration.test_api_auth import connack
from tests.integration.test_cluster import Sender, check_log, pick_channel

OLD = "test-cluster-secret"  # what Cluster starts with
NEW = "the-new-cluster-password-42"
PASSWORD = "RAFTCHAT_CLUSTER_PASSWORD"
ACCEPTED = "RAFTCHAT_CLUSTER_PASSWORD_ACCEPTED"

ROUNDS: list[dict[str, str | None]] = [
    {ACCEPTED: NEW},  # 1: every node accepts the new password, still signs with the old
    {PASSWORD: NEW, ACCEPTED: OLD},  # 2: signs with the new one, accepts the old
    {PASSWORD: NEW, ACCEPTED: None},  # 3: the old password opens nothing any more
]


def test_the_cluster_password_changes_without_downtime(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, messages__group_rate_limit=0)
    cluster.start()
    try:
        assert cluster.nodes[1].env[PASSWORD] == OLD
        cluster.api(1).token("alice", "t-alice")  # hashed under the old password
        channel = pick_channel(cluster)
        cluster.api(2).ok(
            "/channel", {"channel_id": channel, "channel_type": 2, "subscribers": ["writer"]}
        )
        sender = Sender(cluster, channel, nodes=[1, 2, 3])
        sender.start()
        sender.wait_for(10)
        for number, settings in enumerate(ROUNDS, 1):
            for proc in cluster.nodes.values():
                proc.stop()
                for key, value in settings.items():
                    if value is None:
                        proc.env.pop(key, None)
                    else:
                        proc.env[key] = value
                proc.start()  # returns once every group it holds has a leader
                before = len(sender.acked)
                sender.wait_for(before + 5)  # writes go on through every step
            if number == 2:
                # Every node signs with the new password now: alice's login re-hashes her token.
                assert connack(cluster.nodes[3], "alice", "t-alice") == ReasonCode.SUCCESS
                eventually(
                    lambda: any(
                        "token re-sealed" in p.log_path.read_text() for p in cluster.nodes.values()
                    ),
                    what="alice's token hashed again under the new password",
                )
        sender.stop.set()
        sender.join(30)
        check_log(cluster, channel, sender.acked)
        assert connack(cluster.nodes[1], "alice", "t-alice") == ReasonCode.SUCCESS
        assert connack(cluster.nodes[2], "alice", "wrong") == ReasonCode.AUTH_FAIL
    finally:
        cluster.stop()
