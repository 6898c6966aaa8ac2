"""The answering end of unary peer calls over one stream per peer (``Calls``;
``cluster/stream_calls.py`` is the calling end).

Each call in a frame runs as the same trio handler a unary call of that method runs, under the
caller's deadline; its answer goes back as a frame of its own, numbered and MAC'd under the
stream's key, in the order the handlers finish. Once ``MAX_CALLS_IN_FLIGHT`` calls of a stream
are taken and not yet answered on the wire, no more frames are read from it until one is: a
caller that sends faster than it reads its answers is held back by HTTP/2 flow control.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from cluster.stream_auth import answer_mac
from cluster.stream_server import (
    Refused,
    Session,
    StreamHost,
    check_frame,
    decoded,
    signed_stream_method,
)
from proto.raftchat.peer.v1 import peer_pb2 as pb

MAX_CALLS_IN_FLIGHT = 1024
MAX_CALL_S = 60.0
"""A call's deadline at most (the callers' are seconds)."""


@dataclass(frozen=True)
class Unary:
    """A unary method callable over the stream: its trio handler and request decoder."""

    handler: Callable[[Any], Awaitable[Any]]
    decode: Callable[[bytes], Any]


class Abort(Protocol):
    """How a handler's call ended otherwise than with a reply (``bridge.GrpcAbort``)."""

    code: grpc.StatusCode
    message: str


Answer = Callable[[Any, "Abort | None"], None]


class CallsHost(StreamHost, Protocol):
    def start_call(
        self,
        name: str,
        handler: Callable[[Any], Awaitable[Any]],
        request: Any,
        remaining: float | None,
        peer: str,
        on_answer: Answer,
    ) -> Any: ...

    def cancel_call(self, call: Any) -> None: ...


def calls_method(
    host: CallsHost, path: str, name: str, unary: Mapping[str, Unary]
) -> Callable[..., Awaitable[None]]:
    """The grpc.aio handler of the stream of calls ``name`` at ``path``."""

    def open_session(context: Any, skey: bytes, _epoch: bytes) -> Session:
        return _Calls(host, name, unary, context, skey)

    return signed_stream_method(host, path, name, open_session)


class _Calls:
    def __init__(
        self,
        host: CallsHost,
        name: str,
        unary: Mapping[str, Unary],
        context: Any,
        skey: bytes,
    ) -> None:
        self._host, self._name, self._unary = host, name, unary
        self._context, self._skey = context, skey
        self._peer = context.peer() or ""
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._running: dict[int, Any] = {}  # call id -> the bridge's call, until answered
        # Calls taken and not yet answered on the wire: bounded, so that a caller that does not
        # read its answers stops being read from (HTTP/2 flow control holds it back).
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._seq = 0

    async def receive(self, frames: Any) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write())
        expected = 0
        async for raw in frames:
            frame = decoded(pb.StreamFrame.FromString, raw, self._name, "frame")
            check_frame(frame, self._skey, expected, self._name)
            expected = frame.seq + 1
            self._take()
            self._start(decoded(pb.StreamCall.FromString, frame.body, self._name, "call"))
            await self._room.wait()

    def _take(self) -> None:
        self._in_flight += 1
        self._idle.clear()
        if self._in_flight >= MAX_CALLS_IN_FLIGHT:
            self._room.clear()

    def _written(self) -> None:
        self._in_flight -= 1
        if self._in_flight < MAX_CALLS_IN_FLIGHT:
            self._room.set()
        if self._in_flight == 0:
            self._idle.set()

    def _start(self, call: pb.StreamCall) -> None:
        method = self._unary.get(call.method)
        if method is None:
            self._refuse(call.id, grpc.StatusCode.UNIMPLEMENTED, "method not served by this node")
            return
        try:
            request = method.decode(call.request)
        except DecodeError as e:
            message = f"{call.method}: the request does not decode: {e}"
            self._refuse(call.id, grpc.StatusCode.INVALID_ARGUMENT, message)
            return
        # The caller's deadline, as a unary call's; never longer than MAX_CALL_S.
        remaining = min(call.timeout_ms / 1000, MAX_CALL_S) if call.timeout_ms else MAX_CALL_S
        done = functools.partial(self._done, call.id)
        started = self._host.start_call(
            call.method, method.handler, request, remaining, self._peer, done
        )
        if started is None:
            raise Refused(grpc.StatusCode.UNAVAILABLE, "node is shutting down")
        self._running[call.id] = started

    def _done(self, call_id: int, value: Any, error: Abort | None) -> None:
        self._running.pop(call_id, None)
        if error is None:
            self._send(pb.StreamReply(id=call_id, reply=value.SerializeToString()))
        else:
            self._refuse(call_id, error.code, error.message)

    def _refuse(self, call_id: int, code: grpc.StatusCode, details: str) -> None:
        self._send(pb.StreamReply(id=call_id, code=code.value[0], details=details))

    def _send(self, reply: pb.StreamReply) -> None:
        self._seq += 1
        body = reply.SerializeToString()
        tag = answer_mac(self._skey, self._seq, body)
        frame = pb.StreamFrame(seq=self._seq, body=body, mac=tag)
        self._out.put_nowait(frame.SerializeToString())

    async def _write(self) -> None:
        with contextlib.suppress(Exception):  # the stream ended: nobody reads the answers
            while True:
                await self._context.write(await self._out.get())
                self._written()

    async def stopping(self) -> None:
        """The server stops: no more calls are read; those running get the server's grace to
        finish (as unary calls do), and their answers go out before the stream ends."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self._host.grace_s)

    def close(self) -> None:
        # Calls still running have nobody to answer: cancelled, as a unary call's handler is
        # when its caller goes away.
        for call in self._running.values():
            self._host.cancel_call(call)
        self._running.clear()
        if self._writer is not None:
            self._writer.cancel()
