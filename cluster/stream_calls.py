"""Unary peer calls over one long-lived signed stream per peer (``Calls``), driven from trio.

A unary call costs each side a call's set-up, its metadata, its MAC and its completion on a
grpcio thread; over the stream a call is a frame out and a frame back on the gRPC servers'
asyncio thread (``cluster/stream_calls_server.py`` answers; ADR 026). A caller sees what it saw
with a unary call: the reply, or ``GrpcCallError`` with the status (UNAVAILABLE when the stream
broke or could not be opened, DEADLINE_EXCEEDED past its timeout), so retries stay the
callers' business. A call does not survive a broken stream: its outcome is unknown, as that of a
unary call whose connection broke.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import grpc
import outcome
import trio

from cluster.aio_thread import AsyncioThread
from cluster.grpc_client import GrpcCallError
from cluster.peer_stream import aio_channel, ended, open_stream
from cluster.peerauth import PeerKeys, recipient_of
from cluster.stream_auth import EPOCH_BYTES, answer_matches, frame_mac
from proto.raftchat.peer.v1 import peer_pb2 as pb

log = logging.getLogger("raftchat.bridge")

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Waiter:
    __slots__ = ("task", "waiting")

    def __init__(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.waiting = True


class CallStream:
    """Calls to one peer over its ``Calls`` stream, opened when a call needs it."""

    def __init__(
        self,
        target: str,
        path: str,
        keys: PeerKeys,
        loop_thread: AsyncioThread,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target, self._path, self._keys = target, path, keys
        self._credentials = credentials
        self._epoch = secrets.token_bytes(EPOCH_BYTES)
        self._to = recipient_of(target)
        self._token = trio.lowlevel.current_trio_token()
        self._loop_thread = loop_thread
        self._loop = loop_thread.acquire()
        self._waiters: dict[int, _Waiter] = {}  # trio thread only
        self._last_id = 0
        # Asyncio's side: calls not yet written, as (id, body).
        self._outbox: collections.deque[tuple[int, bytes]] = collections.deque()
        self._wake = asyncio.Event()  # only touched on the loop
        self.unsupported = False
        """The peer does not serve the stream (an older version): the caller falls back."""
        self._task = asyncio.run_coroutine_threadsafe(self._run(), self._loop)

    # ---- trio thread --------------------------------------------------------------------

    async def call(
        self, method: str, request: Any, timeout_s: float, decode: Callable[[bytes], Any]
    ) -> Any:
        """``method``'s reply, decoded; raises GrpcCallError on any other outcome."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._last_id += 1
        call_id = self._last_id
        body = pb.StreamCall(
            id=call_id,
            method=method,
            timeout_ms=max(1, int(timeout_s * 1000)),
            request=request.SerializeToString(),
        ).SerializeToString()
        waiter = self._waiters[call_id] = _Waiter()

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            waiter.waiting = False
            self._waiters.pop(call_id, None)
            return trio.lowlevel.Abort.SUCCEEDED

        self._loop.call_soon_threadsafe(self._enqueue, call_id, body)
        with trio.move_on_after(timeout_s):
            raw = await trio.lowlevel.wait_task_rescheduled(abort)
            return decode(raw)
        raise GrpcCallError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{method}: deadline exceeded")

    def _answer(self, call_id: int, result: outcome.Outcome[bytes]) -> None:
        waiter = self._waiters.pop(call_id, None)
        if waiter is not None and waiter.waiting:
            waiter.waiting = False
            trio.lowlevel.reschedule(waiter.task, result)

    def _fail_up_to(self, last_id: int, code: grpc.StatusCode) -> None:
        """The calls up to ``last_id`` went with a stream that ended with ``code``."""
        error = GrpcCallError(code, "the stream of calls ended")
        for call_id in [i for i in self._waiters if i <= last_id]:
            self._answer(call_id, outcome.Error(error))

    async def aclose(self) -> None:
        self._loop.call_soon_threadsafe(self._task.cancel)
        with contextlib.suppress(BaseException):
            await trio.to_thread.run_sync(self._task.result)
        self._fail_up_to(self._last_id, grpc.StatusCode.CANCELLED)
        thread = self._loop_thread.release()
        if thread is not None:
            await trio.to_thread.run_sync(thread.join)

    # ---- asyncio thread -----------------------------------------------------------------

    def _enqueue(self, call_id: int, body: bytes) -> None:
        self._outbox.append((call_id, body))
        self._wake.set()

    def _to_trio(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    async def _run(self) -> None:
        channel = aio_channel(self.target, self._credentials)
        try:
            while True:
                while not self._outbox:
                    self._wake.clear()
                    await self._wake.wait()
                last, code = await self._one_stream(channel)
                # Whatever was written to the broken stream, or waited for it, fails: the
                # callers retry (over the next stream) as after a failed unary call.
                if self._outbox:
                    last = max(last, self._outbox[-1][0])
                    self._outbox.clear()
                if code in (None, grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
                    code = grpc.StatusCode.UNAVAILABLE  # ended by this side, or not known
                self._to_trio(self._fail_up_to, last, code)
        finally:
            await channel.close()

    async def _one_stream(self, channel: Any) -> tuple[int, grpc.StatusCode | None]:
        """One stream, until it breaks; the id of the last call written to it, and how it
        ended."""
        call, skey = await open_stream(channel, self._path, self._keys, self._to, self._epoch)
        reader = asyncio.get_running_loop().create_task(self._read_answers(call, skey))
        seq = last = 0
        try:
            while not reader.done():
                while self._outbox:
                    call_id, body = self._outbox.popleft()
                    seq, last = seq + 1, call_id
                    frame = pb.StreamFrame(seq=seq, body=body, mac=frame_mac(skey, seq, body))
                    await call.write(frame.SerializeToString())
                self._wake.clear()
                await self._wake.wait()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass
        finally:
            code = await ended(call, reader, self.target)
        self.unsupported = code == grpc.StatusCode.UNIMPLEMENTED
        return last, code

    async def _read_answers(self, call: Any, skey: bytes) -> None:
        expected = 1
        try:
            while True:
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    return
                frame = pb.StreamFrame.FromString(raw)
                if frame.seq != expected or not answer_matches(
                    skey, frame.seq, frame.body, frame.mac
                ):
                    log.warning("%s: an answer out of order or with a wrong MAC", self.target)
                    return
                expected += 1
                reply = pb.StreamReply.FromString(frame.body)
                if reply.code == 0:
                    result: outcome.Outcome[bytes] = outcome.Value(reply.reply)
                else:
                    code = _CODES.get(reply.code, grpc.StatusCode.UNKNOWN)
                    result = outcome.Error(GrpcCallError(code, reply.details))
                self._to_trio(self._answer, reply.id, result)
        except Exception:  # the stream broke (the status says how) or sent garbage
            return
        finally:
            self._wake.set()  # the writer waits on it


class CallStreams:
    """One ``CallStream`` per peer address (trio thread)."""

    def __init__(
        self,
        keys: PeerKeys,
        loop_thread: AsyncioThread,
        path: str,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._keys, self._loop_thread, self._path = keys, loop_thread, path
        self._credentials = credentials
        self._streams: dict[str, CallStream] = {}

    def get(self, target: str) -> CallStream:
        stream = self._streams.get(target)
        if stream is None:
            stream = self._streams[target] = CallStream(
                target, self._path, self._keys, self._loop_thread, self._credentials
            )
        return stream

    async def aclose(self) -> None:
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            await stream.aclose()
