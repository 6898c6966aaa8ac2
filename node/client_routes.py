"""``/route``: which node a client should connect to.

Clients ask any node's HTTP API where to connect. The answer spreads users over the nodes that
are live now, and is stable per uid: rendezvous hashing gives every (uid, node) pair a score and
picks the live node with the highest. A node that leaves or stops answering moves only its own
users, each to the node with their next best score; the others stay where they were.

Every node learns the others' client addresses (external and intranet) and liveness by asking
each of them for its ``Endpoints`` once per ``POLL_S``; a node that has not answered within
``LIVE_S`` is not handed out. A node always counts itself live: it is answering.

A draining node (``node/drain.py``) is never handed out. It tells the others at once (the
admin op ``peer_draining``), and stops answering ``Endpoints``, so that a node that missed the
word stops handing it out after ``LIVE_S`` all the same. It counts as draining until it answers
a poll that started after the word came: that is the node started again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
import trio

from cluster.bridge import GrpcAbort
from proto.raftchat.peer.v1 import peer_pb2 as pb

from .config import Config

POLL_S = 1.0
LIVE_S = 3.5
"""A node not heard from for this long is not handed out (more than three missed polls)."""

CallEach = Callable[[str, Any, float], Awaitable[Mapping[int, Any]]]
Members = Callable[[], Iterable[int]]


class NoNodeAccepting(Exception):
    """Every node that could be handed out is draining or silent."""


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
        # node id -> when it said it is draining
        self._draining: dict[int, float] = {}
        self.draining = False
        """This node is draining: it hands out the others only, and answers no poll."""

    async def rpc_endpoints(self, _req: pb.EndpointsRequest) -> pb.EndpointsReply:
        if self.draining:
            raise GrpcAbort(grpc.StatusCode.UNAVAILABLE, "draining: takes no new clients")
        return self._own

    def peer_draining(self, node_id: int) -> None:
        """``node_id`` said it is draining: stop handing it out now."""
        self._draining[node_id] = self._clock()
        self._heard.pop(node_id, None)

    def draining_nodes(self) -> set[int]:
        """The members known to be draining, this node included when it is."""
        out = set(self._draining)
        if self.draining:
            out.add(self._node_id)
        return out

    async def run(self) -> None:
        while True:
            await self.poll()
            await trio.sleep(POLL_S)

    async def poll(self) -> None:
        started = self._clock()
        replies = await self._call_each("Endpoints", pb.EndpointsRequest(), POLL_S)
        now = self._clock()
        for node_id, reply in replies.items():
            said = self._draining.get(node_id)
            if said is not None:
                if said >= started:
                    continue  # an answer from before it began to drain
                del self._draining[node_id]  # it answers again: started anew
            self._heard[node_id] = (reply, now)

    def live(self) -> dict[int, pb.EndpointsReply]:
        """Members that answered lately and are not draining, with their endpoints; this node
        unless it is draining."""
        now = self._clock()
        out = {} if self.draining else {self._node_id: self._own}
        for node_id in self._members():
            heard = self._heard.get(node_id)
            if (
                node_id != self._node_id
                and node_id not in self._draining
                and heard is not None
                and now - heard[1] <= LIVE_S
            ):
                out[node_id] = heard[0]
        return out

    def _accepting(self) -> dict[int, pb.EndpointsReply]:
        live = self.live()
        if not live:
            raise NoNodeAccepting("no node takes new clients now (this one is draining)")
        return live

    def route(self, uid: str | None, intranet: bool) -> dict[str, str]:
        """Where ``uid`` should connect; without a uid, this node (WuKongIM's answer), or
        when it drains, the live node with the lowest id. Raises ``NoNodeAccepting``."""
        live = self._accepting()
        if not uid:
            own = self._own if self._node_id in live else live[min(live)]
            return as_route(own, intranet)
        return as_route(live[pick(uid, live)], intranet)

    def route_batch(self, uids: list[str], intranet: bool) -> list[dict[str, Any]]:
        """The uids grouped by the node each goes to (WuKongIM's ``/route/batch`` shape).
        Raises ``NoNodeAccepting``."""
        live = self._accepting()
        groups: dict[int, list[str]] = {}
        for uid in uids:
            groups.setdefault(pick(uid, live), []).append(uid)
        return [
            {"uids": members, **as_route(live[node_id], intranet)}
            for node_id, members in sorted(groups.items())
        ]
