"""``/route``: which node a client should connect to.

Clients ask any node's HTTP API where to connect. The answer spreads users over the nodes that
are live now, and is stable per uid: rendezvous hashing gives every (uid, node) pair a score and
picks the live node with the highest. A node that leaves or stops answering moves only its own
users, each to the node with their next best score; the others stay where they were.

Every node learns the others' client addresses (external and intranet) and liveness by asking
each of them for its ``Endpoints`` once per ``POLL_S``; a node that has not answered within
``LIVE_S`` is not handed out. A node always counts itself live: it is answering.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import trio

from proto.raftchat.peer.v1 import peer_pb2 as pb

from .config import Config

POLL_S = 1.0
LIVE_S = 3.5
"""A node not heard from for this long is not handed out (more than three missed polls)."""

CallEach = Callable[[str, Any, float], Awaitable[Mapping[int, Any]]]
Members = Callable[[], Iterable[int]]


def own_endpoints(cfg: Config) -> pb.EndpointsReply:
    gw, host = cfg.gateway, cfg.node.host
    tcp = f"{host}:{gw.tcp_port}"
    ws = f"ws://{host}:{gw.ws_port}"
    # WSS is served when the node has a certificate. Without one, an external address may
    # still be advertised: a proxy in front of the node that terminates TLS.
    wss = f"wss://{host}:{gw.wss_port}" if cfg.tls.cert_file else ""
    return pb.EndpointsReply(
        tcp_addr=gw.external_tcp_addr or tcp,
        ws_addr=gw.external_ws_addr or ws,
        wss_addr=gw.external_wss_addr or wss,
        intranet_tcp_addr=tcp,
        intranet_ws_addr=ws,
        intranet_wss_addr=wss,
    )


def score(uid: str, node_id: int) -> int:
    digest = hashlib.blake2b(f"{node_id}\0{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def pick(uid: str, nodes: Iterable[int]) -> int:
    """The node ``uid`` goes to among ``nodes`` (rendezvous hashing; pure)."""
    return max(nodes, key=lambda n: (score(uid, n), n))


def as_route(e: pb.EndpointsReply, intranet: bool) -> dict[str, str]:
    if intranet:
        return {
            "tcp_addr": e.intranet_tcp_addr,
            "ws_addr": e.intranet_ws_addr,
            "wss_addr": e.intranet_wss_addr,
        }
    return {"tcp_addr": e.tcp_addr, "ws_addr": e.ws_addr, "wss_addr": e.wss_addr}


class ClientRoutes:
    def __init__(
        self,
        node_id: int,
        own: pb.EndpointsReply,
        members: Members,
        call_each: CallEach,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._node_id = node_id
        self._own = own
        self._members = members
        self._call_each = call_each
        self._clock = clock
        # node id -> (its endpoints, when it last answered)
        self._heard: dict[int, tuple[pb.EndpointsReply, float]] = {}

    async def rpc_endpoints(self, _req: pb.EndpointsRequest) -> pb.EndpointsReply:
        return self._own

    async def run(self) -> None:
        while True:
            await self.poll()
            await trio.sleep(POLL_S)

    async def poll(self) -> None:
        replies = await self._call_each("Endpoints", pb.EndpointsRequest(), POLL_S)
        now = self._clock()
        for node_id, reply in replies.items():
            self._heard[node_id] = (reply, now)

    def live(self) -> dict[int, pb.EndpointsReply]:
        """Members that answered lately, with their endpoints; this node always."""
        now = self._clock()
        out = {self._node_id: self._own}
        for node_id in self._members():
            heard = self._heard.get(node_id)
            if node_id != self._node_id and heard is not None and now - heard[1] <= LIVE_S:
                out[node_id] = heard[0]
        return out

    def route(self, uid: str | None, intranet: bool) -> dict[str, str]:
        """Where ``uid`` should connect; without a uid, this node (WuKongIM's answer)."""
        if not uid:
            return as_route(self._own, intranet)
        live = self.live()
        return as_route(live[pick(uid, live)], intranet)

    def route_batch(self, uids: list[str], intranet: bool) -> list[dict[str, Any]]:
        """The uids grouped by the node each goes to (WuKongIM's ``/route/batch`` shape)."""
        live = self.live()
        groups: dict[int, list[str]] = {}
        for uid in uids:
            groups.setdefault(pick(uid, live), []).append(uid)
        return [
            {"uids": members, **as_route(live[node_id], intranet)}
            for node_id, members in sorted(groups.items())
        ]
