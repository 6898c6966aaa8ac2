"""gRPC calls through grpcio, to see the status every fuzzed request ends with (the raw HTTP/2
scenarios of :mod:`chaos.fuzz.rpc` do not decode HPACK). Each call is one frame of the ``grpc``
target. Request bytes are made and checked by the same rules as there (:func:`request_body`),
and go out as they are (no serializer), so a body a request type cannot decode reaches the
server. INTERNAL and UNKNOWN statuses are findings: the API promises a precise status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from .context import FuzzContext
from .executor import TargetStats
from .rpc import Method, bearer, methods, peer_credential, request_body
from .scenario import scenario_rng

CALL_TIMEOUT_S = 3.0
SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
LIBRARY_DECODE_ERROR = "Exception deserializing request!"
"""grpcio's own answer (INTERNAL) when a request does not decode, before any handler runs."""


@dataclass(frozen=True, slots=True)
class Call:
    method: Method
    body: bytes
    node: int
    metadata: tuple[tuple[str, str], ...]
    port: int


class GrpcCaller:
    """One grpcio channel per node; :meth:`call` is blocking (run it in a thread)."""

    def __init__(self, ctx: FuzzContext) -> None:
        self.ctx = ctx
        options = [("grpc.max_send_message_length", 32 << 20)]
        self.channels = {
            (n, port): grpc.insecure_channel(f"{h}:{port}", options=options)
            for n, h in ctx.hosts.items()
            for port in (ctx.grpc_port, ctx.peer_port)
        }

    def plan(self, seed: int, conn_no: int) -> Call:
        """Call ``conn_no`` of this seed (what :meth:`call` sends)."""
        rng = scenario_rng(seed, "grpc-call", conn_no)
        method = rng.choice(methods())
        body = request_body(method, rng, self.ctx)
        node = rng.choice(self.ctx.nodes)
        metadata: list[tuple[str, str]] = []
        if rng.random() < 0.25:
            metadata.append(("x-raftchat-peer", rng.randbytes(32).hex()))
        elif rng.random() < 0.33:  # well-formed, for this node, under a stranger's key
            value = peer_credential(rng, method.path, b"", self.ctx.hosts[node])
            metadata.append(("x-raftchat-peer", value))
        authorization = bearer(self.ctx, method.path, rng)
        if authorization is not None:
            metadata.append(("authorization", authorization))
        # Mostly where the method is served; now and then on the other port (UNIMPLEMENTED).
        home = self.ctx.peer_port if method.peer else self.ctx.grpc_port
        away = self.ctx.grpc_port if method.peer else self.ctx.peer_port
        port = home if rng.random() < 0.9 else away
        return Call(method, body, node, tuple(metadata), port)

    def call(self, c: Call) -> tuple[str, str, dict[str, Any] | None]:
        """Make a call (blocking); (method, status name, finding or None)."""
        method, body, node, metadata = c.method, c.body, c.node, list(c.metadata)
        channel = self.channels[(node, c.port)]
        try:
            if method.streaming:
                stream = channel.unary_stream(method.path)(body, timeout=0.5, metadata=metadata)
                for _ in zip(range(3), stream, strict=False):
                    pass
                stream.cancel()
            else:
                channel.unary_unary(method.path)(body, timeout=CALL_TIMEOUT_S, metadata=metadata)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            code = e.code()
            details = e.details() or ""
        if code == grpc.StatusCode.CANCELLED and method.streaming:
            code = grpc.StatusCode.OK  # our own cancel of a stream that was answering
        finding = None
        if code in SERVER_ERRORS:
            kind = "grpc_decode_internal" if details == LIBRARY_DECODE_ERROR else "grpc_internal"
            finding = {
                "kind": kind,
                "method": method.path,
                "node": node,
                "status": code.name,
                "details": details[:300],
                "body_hex": body[:300].hex(),
            }
        return method.path, code.name, finding

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


def record(stats: TargetStats, result: tuple[str, str, dict[str, Any] | None], replay: str) -> None:
    _, status, finding = result
    stats.frames += 1
    stats.answers[f"grpc:{status}"] += 1
    stats.scenarios["grpcio_call"] += 1
    if finding is not None:
        stats.add_findings([finding], replay)
