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
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import outcome
import trio

from cluster.aio_thread import AsyncioThread
from cluster.grpc_client import GrpcCallError
from cluster.peer_stream import StreamEnd, ended, open_stream
from cluster.peerauth import PeerKeys
from cluster.stream_auth import answer_matches, frame_mac
from proto.raftchat.peer.v1 import peer_pb2 as pb

log = logging.getLogger("raftchat.bridge")

_CODES = {code.value[0]: code for code in grpc.StatusCode}
MAX_OUTSTANDING = 1024
"""Calls to one peer waiting for their answers; more are refused at once (RESOURCE_EXHAUSTED)."""
MIN_LEFT_MS = 10
"""A call with less time left than this is not sent: its answer would come too late."""
BACKOFF_S = (0.05, 0.5)


class _Outgoing:
    """A call on its way to the stream. ``withdrawn`` is set by the trio thread when the caller
    gave up; the loop reads it before writing (a bool: no lock needed)."""

    __slots__ = ("call_id", "deadline", "method", "request", "withdrawn")

    def __init__(self, call_id: int, method: str, request: bytes, deadline: float) -> None:
        self.call_id, self.method, self.request, self.deadline = call_id, method, request, deadline
        self.withdrawn = False

    def body(self, now: float) -> bytes | None:
        """The frame's body, with the time left as the peer's deadline; None when the call
        must not go out any more (withdrawn, or too late to be answered in time)."""
        left_ms = int((self.deadline - now) * 1000)
        if self.withdrawn or left_ms < MIN_LEFT_MS:
            return None
        call = pb.StreamCall(
            id=self.call_id, method=self.method, timeout_ms=left_ms, request=self.request
        )
        return call.SerializeToString()


class _Waiter:
    __slots__ = ("task", "waiting")

    def __init__(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.waiting = True


class CallStream(StreamEnd):
    """Calls to one peer over its ``Calls`` stream, opened when a call needs it."""

    def __init__(
        self,
        target: str,
        path: str,
        keys: PeerKeys,
        loop_thread: AsyncioThread,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        super().__init__(target, path, keys, loop_thread, credentials)
        self._waiters: dict[int, _Waiter] = {}  # trio thread only
        self._last_id = 0
        # Asyncio's side: calls not yet written.
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._start()

    # ---- trio thread --------------------------------------------------------------------

    async def call(
        self, method: str, request: Any, timeout_s: float, decode: Callable[[bytes], Any]
    ) -> Any:
        """``method``'s reply, decoded; raises GrpcCallError on any other outcome."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if len(self._waiters) >= MAX_OUTSTANDING:
            raise GrpcCallError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls in flight")
        self._last_id += 1
        call_id = self._last_id
        deadline = time.monotonic() + timeout_s
        outgoing = _Outgoing(call_id, method, request.SerializeToString(), deadline)
        waiter = self._waiters[call_id] = _Waiter()

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            waiter.waiting = False
            self._waiters.pop(call_id, None)
            outgoing.withdrawn = True  # not written any more (read on the loop: a bool)
            return trio.lowlevel.Abort.SUCCEEDED

        self._loop.call_soon_threadsafe(self._enqueue, outgoing)
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
        await super().aclose()
        self._fail_up_to(self._last_id, grpc.StatusCode.CANCELLED)

    # ---- asyncio thread -----------------------------------------------------------------

    def _enqueue(self, outgoing: _Outgoing) -> None:
        self._outbox.append(outgoing)
        self._wake.set()

    async def _keep_up(self, channel: Any) -> None:
        backoff = BACKOFF_S[0]
        while True:
            while not self._outbox:
                self._wake.clear()
                await self._wake.wait()
            last, code, answered = await self._one_stream(channel)
            # Whatever was written to the broken stream, or waited for it, fails: the callers
            # retry (over the next stream) as after a failed unary call.
            if self._outbox:
                last = max(last, self._outbox[-1].call_id)
                self._outbox.clear()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                self._mark_unsupported()
            elif code in (None, grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
                code = grpc.StatusCode.UNAVAILABLE  # ended by this side, or not known
            self._to_trio(self._fail_up_to, last, code)
            # A peer that is down: the calls fail at once, the next stream waits a little.
            backoff = BACKOFF_S[0] if answered else min(backoff * 2, BACKOFF_S[1])
            await asyncio.sleep(0 if answered else backoff)

    async def _one_stream(self, channel: Any) -> tuple[int, grpc.StatusCode | None, bool]:
        """One stream, until it breaks: the id of the last call written to it, how it ended,
        and whether it answered any call."""
        call, skey = await open_stream(channel, self._path, self._keys, self._to, self._epoch)
        answered = [False]
        reader = asyncio.get_running_loop().create_task(self._read_answers(call, skey, answered))
        seq = last = 0
        try:
            while not reader.done():
                while self._outbox:
                    outgoing = self._outbox.popleft()
                    body = outgoing.body(time.monotonic())
                    if body is None:
                        continue  # its caller gave up: the peer never sees it
                    seq, last = seq + 1, outgoing.call_id
                    frame = pb.StreamFrame(seq=seq, body=body, mac=frame_mac(skey, seq, body))
                    await call.write(frame.SerializeToString())
                self._wake.clear()
                await self._wake.wait()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass
        finally:
            code = await ended(call, reader, self.target)
        return last, code, answered[0]

    async def _read_answers(self, call: Any, skey: bytes, answered: list[bool]) -> None:
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
                answered[0] = True
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
