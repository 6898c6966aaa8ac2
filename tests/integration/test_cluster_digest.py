"""``GET /cluster/digest``: each node's own view of the slot groups it hosts, for comparing
replicas (the chaos suite's split-brain check)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from launcher.devcluster import SLOT_GROUPS
from node.channels import person_channel_id
from tests.conftest import Api, Cluster, eventually, start_node


def send(api: Api, from_uid: str, to: str, text: str, channel_type: int = 1) -> Any:
    return api.ok(
        "/message/send",
        {
            "from_uid": from_uid,
            "channel_id": to,
            "channel_type": channel_type,
            "payload": base64.b64encode(text.encode()).decode(),
        },
    )


def digest(api: Api) -> Any:
    resp = api.http.get("/cluster/digest")
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_single_node_digest(tmp_path: Path) -> None:
    node = start_node(tmp_path)
    api = Api(node.endpoints["http"])
    try:
        before = digest(api)
        assert before["node"] == 1
        assert [g["group"] for g in before["groups"]] == list(range(1, SLOT_GROUPS + 1))
        assert all(g["channels"] == {} and g["is_leader"] for g in before["groups"])
        for text in ("one", "two", "three"):
            send(api, "alice", "bob", text)
        send(api, "carol", "bob", "hi")
        after = digest(api)
        channels = {c: v for g in after["groups"] for c, v in g["channels"].items()}
        ab = f"1:{person_channel_id('alice', 'bob')}"
        assert set(channels) == {ab, f"1:{person_channel_id('carol', 'bob')}"}
        assert channels[ab][0] == 3 and len(channels[ab][1]) == 32
        for g in after["groups"]:
            assert g["leader"] == 1 and g["commit"] >= g["applied"] >= (1 if g["channels"] else 0)
        send(api, "alice", "bob", "four")
        again = {c: v for g in digest(api)["groups"] for c, v in g["channels"].items()}
        assert again[ab][0] == 4 and again[ab][1] != channels[ab][1]
    finally:
        api.http.close()
        node.stop()


def test_replicas_converge_to_equal_digests(cluster3: Cluster) -> None:
    apis = {n: cluster3.api(n) for n in cluster3.nodes}
    for i in range(12):
        send(apis[i % 3 + 1], f"u{i % 4}", f"v{i % 5}", f"m{i}")

    def converged() -> bool:
        views = {n: {g["group"]: g for g in digest(a)["groups"]} for n, a in apis.items()}
        for group in views[1]:
            replicas = [v[group] for v in views.values() if group in v]
            if len(replicas) < 2:
                continue
            if len({(r["applied"], str(sorted(r["channels"].items()))) for r in replicas}) > 1:
                return False
        return sum(len(g["channels"]) for g in views[1].values()) > 0

    def one_leader_each() -> bool:
        # The controller moves leaderships for balance in the first seconds after start, and
        # each node answers from its own view: a move between two of the three reads counts
        # a group twice or not at all. Settled, every group has exactly one leader.
        groups = digest(apis[2])["groups"]
        leaders = sum(g["is_leader"] for a in apis.values() for g in digest(a)["groups"])
        return leaders == len(groups)

    eventually(converged, timeout_s=15, what="replica digests to agree")
    groups = digest(apis[2])["groups"]
    assert sum(v[0] for g in groups for v in g["channels"].values()) == 12
    eventually(one_leader_each, timeout_s=15, what="one leader per group")
    for a in apis.values():
        a.http.close()
