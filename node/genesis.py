"""A node's first cluster map, on its first start (a restart continues from the stored one)."""

from __future__ import annotations

import json
import secrets

import trio

from cluster.grpc_client import GrpcCallError, GrpcClients
from cluster.placement import Placement, from_json, initial_placement
from proto.raftchat.peer.v1 import peer_pb2 as pb

from .admin import REFUSED, code_of
from .config import Config
from .identity import DataDir
from .log import get_logger
from .startup import refused

log = get_logger("node")

JOIN_PATIENCE_S = 60.0
"""How long a joining node keeps asking to be admitted before it gives up."""


async def first_placement(config: Config, clients: GrpcClients, datadir: DataDir) -> Placement:
    """Computed from ``cluster.nodes`` by every initial member, or received from the cluster
    when this node joins through ``cluster.join``: its signed call is what admits it
    (``node/admin.py``)."""
    cfg = config
    if not cfg.cluster.join:
        return initial_placement(cfg.cluster_nodes(), cfg.cluster.groups, cfg.cluster.replicas)
    seed = f"{cfg.cluster.join}:{cfg.cluster.grpc_port}"
    request = {"op": "join", "node_id": cfg.node.id, "host": cfg.node.host}
    if cfg.node.zone:
        request["zone"] = cfg.node.zone
    deadline = trio.current_time() + JOIN_PATIENCE_S
    while True:
        try:
            raw = await clients.get(seed).call(
                "Admin", pb.AdminRequest(request=json.dumps(request).encode()), timeout_s=30
            )
            reply = json.loads(raw.reply)
            if "placement" in reply:
                # Recorded before the map is used: a restart then knows whose data this is.
                # (A member too old to send its cluster's id leaves this node one of its own.)
                cluster_id = reply.get("cluster_id") or secrets.token_hex(8)
                placement = from_json(reply["placement"])
                datadir.joined(cluster_id, cfg.cluster.password, len(placement.groups))
                return placement
            error = reply.get("error")
            if error is not None and code_of(reply) == REFUSED:
                # Asking again would get the same answer.
                raise refused(f"the cluster refused to admit this node via {seed}: {error}")
        except GrpcCallError as e:
            error = str(e)
            if e.code.name == "UNAUTHENTICATED":
                error += (
                    " (another cluster.password, cluster.join not a member's node.host, "
                    "or clocks more than 30 s apart)"
                )
        if trio.current_time() > deadline:
            raise RuntimeError(f"could not join through {seed}: {error}")
        log.info("join not accepted yet, retrying", seed=seed, error=error)
        await trio.sleep(0.5)
