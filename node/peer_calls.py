"""Calls to the other nodes' peer gRPC service, as the router and its parts make them: one node,
every other node, or each other node within a timeout. Any failure of a call is
``Failure.FORWARD_FAILED``: the callers decide whether to retry, skip the node or give up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import trio

from cluster.grpc_client import GrpcCallError, GrpcClients
from cluster.peer_stream import OutboundStream, StreamEnds
from cluster.placement import Placement
from cluster.stream_calls import CallStream
from proto.raftchat.peer.v1 import peer_pb2 as pb

from .log import get_logger
from .route_failures import Failure

log = get_logger("router")

PEER_SERVICE = pb.DESCRIPTOR.services_by_name["Peer"].full_name
CALLS_PATH = f"/{PEER_SERVICE}/Calls"
STREAMED_CALLS = ("ForwardSends", "ProposeMeta", "Read")
"""The calls of a send's or a read's way, which travel over the peer's stream of calls."""
_REPLY_DECODERS: dict[str, Callable[[bytes], Any]] = {
    name: getattr(pb, method.output_type.name).FromString
    for name, method in pb.DESCRIPTOR.services_by_name["Peer"].methods_by_name.items()
    if name in STREAMED_CALLS
}


@dataclass
class PeerStreams:
    """The long-lived streams to other nodes: batches (``DeliverStream``) and calls."""

    batches: StreamEnds[OutboundStream]
    calls: StreamEnds[CallStream]

    async def aclose(self) -> None:
        await self.batches.aclose()
        await self.calls.aclose()


class PeerCalls:
    def __init__(
        self,
        node_id: int,
        grpc_port: int,
        rpc_timeout_s: float,
        clients: GrpcClients,
        placement: Callable[[], Placement],
        streams: PeerStreams | None = None,
    ) -> None:
        self.node_id = node_id
        self.streams = streams
        self._grpc_port = grpc_port
        self._rpc_timeout_s = rpc_timeout_s
        self._clients = clients
        self._placement = placement

    def target(self, node_id: int) -> str:
        """``host:port`` of a member's peer service; KeyError for a node not in the map."""
        host = self._placement().nodes.get(node_id)
        if host is None:
            raise KeyError(f"node {node_id} is not in the cluster map")
        return f"{host}:{self._grpc_port}"

    def stream(self, node_id: int, method: str) -> OutboundStream | None:
        """The long-lived stream of ``method`` to a member (None: none is kept, or the node
        is not in the map)."""
        if self.streams is None:
            return None
        try:
            target = self.target(node_id)
        except KeyError:
            return None
        return self.streams.batches.get(target, f"/{PEER_SERVICE}/{method}")

    def others(self) -> list[int]:
        return [n for n in self._placement().nodes if n != self.node_id]

    async def call(
        self, target: int, method: str, request: Any, timeout_s: float | None = None
    ) -> Any:
        """``method`` on node ``target``: its reply, or ``Failure.FORWARD_FAILED``."""
        timeout_s = timeout_s or self._rpc_timeout_s
        try:
            address = self.target(target)
            if self.streams is not None and method in STREAMED_CALLS:
                stream = self.streams.calls.get(address, CALLS_PATH)
                if not stream.unsupported:
                    try:
                        decode = _REPLY_DECODERS[method]
                        return await stream.call(method, request, timeout_s, decode)
                    except GrpcCallError as e:
                        # A peer of an older version: the call never ran; once more, unary.
                        if not (e.code == grpc.StatusCode.UNIMPLEMENTED and stream.unsupported):
                            raise
            return await self._clients.get(address).call(method, request, timeout_s=timeout_s)
        except KeyError:
            return Failure.FORWARD_FAILED
        except GrpcCallError as e:
            log.debug("peer call failed", target=target, method=method, code=str(e.code))
            return Failure.FORWARD_FAILED

    async def each(
        self, method: str, request: Any, timeout_s: float | None = None
    ) -> dict[int, Any]:
        """``method`` on every other node, concurrently; the replies of those that answered
        (within ``timeout_s``), by node id."""
        replies: dict[int, Any] = {}

        async def one(node_id: int) -> None:
            reply = await self.call(node_id, method, request, timeout_s)
            if not isinstance(reply, Failure):
                replies[node_id] = reply

        async with trio.open_nursery() as nursery:
            for node_id in self.others():
                nursery.start_soon(one, node_id)
        return replies

    async def gather(self, method: str, request: Any) -> list[Any]:
        """``method`` on every other node; the replies of those that answered in time."""
        return list((await self.each(method, request)).values())
