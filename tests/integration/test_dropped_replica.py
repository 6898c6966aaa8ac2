"""A replica this node dropped stays dropped across a restart, whatever its stored map says.

The controller records a move in the cluster map before it tells the old node to drop its data.
A node killed between the two restarts with a map that still lists it, and used to open the
group again, empty, as a voter under the map's old member list: an empty voter grants its vote
to any candidate, which can elect a leader without committed entries (``node/dropped_groups.py``).
Here a lone node is told to drop a group by a signed ``Admin`` call, as the controller does, and
is restarted on its unchanged map: the group must not come back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from cluster.grpc_client import GrpcClient
from cluster.peerauth import PeerKeys
from launcher.devcluster import GRPC_PORT
from node.dropped_groups import marker
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.raftchat.peer.v1 import peer_pb2_grpc as pb_grpc
from tests.conftest import ADMIN_TOKEN, Api, fresh_host, start_node

PASSWORD = "dropped-replica-secret"


def admin(host: str, request: dict[str, Any]) -> dict[str, Any]:
    async def call() -> dict[str, Any]:
        client = GrpcClient(f"{host}:{GRPC_PORT}", pb_grpc.PeerStub, PeerKeys.of(PASSWORD))
        try:
            body = pb.AdminRequest(request=json.dumps(request).encode())
            raw = await client.call("Admin", body, 30.0)
        finally:
            client.close()
        return dict(json.loads(raw.reply))

    return trio.run(call)


def local_groups(node: Any) -> set[int]:
    api = Api.of(node)
    try:
        status = api.http.get("/cluster/status").json()
    finally:
        api.http.close()
    return {g["group"] for g in status["groups"] if g["local"] and g["group"]}


def test_a_dropped_replica_is_not_reopened_from_an_older_map(tmp_path: Path) -> None:
    host = fresh_host()
    settings = {"cluster__password": PASSWORD, "auth__admin_token": ADMIN_TOKEN}
    node = start_node(tmp_path, host=host, **settings)
    try:
        assert local_groups(node) == {1, 2, 3}
        assert admin(host, {"op": "drop_group", "group": 2}) == {"ok": True}
        assert local_groups(node) == {1, 3}
        assert marker(node.data_dir, 2).exists()
        assert not (node.data_dir / "groups" / "g2").exists()
    finally:
        node.stop()
    node = start_node(tmp_path, host=host, **settings)  # the same directory: its map lists g2
    try:
        assert local_groups(node) == {1, 3}
        log = node.log_path.read_text()
        assert "not reopening a replica this node dropped" in log
        # The controller's word brings it back (as when it adds this node to the group again).
        assert admin(host, {"op": "host_group", "group": 2, "members": [1]}) == {"ok": True}
        assert local_groups(node) == {1, 2, 3}
        assert not marker(node.data_dir, 2).exists()
    finally:
        node.stop()
