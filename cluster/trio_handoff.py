"""The trio side of a gRPC server (``cluster/bridge.py``): calls handed from the asyncio thread
to trio tasks, and their answers back.

A call becomes a trio task in the server's nursery (``TrioHandoff._start``), under the caller's
deadline and a cancel scope the asyncio side cancels when the caller goes away; a one-way
notice is a plain function run in arrival order, with a window that holds senders back while
trio is behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import trio

from cluster.grpc_service import (
    SHUTTING_DOWN,
    GrpcAbort,
    Handler,
    abort_with,
    deadline,
    peer_host,
    set_caller,
)

log = logging.getLogger("raftchat.bridge")

NOTICE_WINDOW = 256
"""Notices handed to trio and not yet handled before new ones wait for theirs."""

STREAM_WINDOW = 64
"""Items a stream handler may emit ahead of what the client has taken."""


class TrioCall:
    """One RPC on its way from the asyncio thread to a trio task and back."""

    def __init__(
        self, name: str, handler: Any, request: Any, remaining: float | None, peer: str = ""
    ) -> None:
        self.name, self.handler, self.request, self.remaining = name, handler, request, remaining
        self.peer = peer_host(peer)
        self.loop = asyncio.get_running_loop()
        # (reply, None) or (None, the error to answer).
        self.answer: asyncio.Future[tuple[Any, GrpcAbort | None]] = self.loop.create_future()
        self.scope = trio.CancelScope()  # only entered and cancelled on the trio thread

    def reply(self, value: Any, error: GrpcAbort | None) -> None:
        """Trio thread: resolve the asyncio side's future."""

        def set_once() -> None:
            if not self.answer.done():  # cancelled when the RPC went away first
                self.answer.set_result((value, error))

        # A closed loop means the aio server is gone and nobody waits for this answer.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(set_once)


class StreamedCall(TrioCall):
    """A call that came over a stream of calls: its answer goes to ``on_answer`` on the
    asyncio thread, which writes it to the stream."""

    def __init__(
        self,
        name: str,
        handler: Any,
        request: Any,
        remaining: float | None,
        peer: str,
        on_answer: Callable[[Any, GrpcAbort | None], None],
    ) -> None:
        super().__init__(name, handler, request, remaining, peer)
        self._on_answer = on_answer

    def reply(self, value: Any, error: GrpcAbort | None) -> None:
        with contextlib.suppress(RuntimeError):  # the aio loop is gone: nobody listens
            self.loop.call_soon_threadsafe(self._on_answer, value, error)


class TrioStreamCall(TrioCall):
    """A server-streaming RPC: items go through an asyncio queue, credits are trio's."""

    def __init__(
        self, name: str, handler: Any, request: Any, remaining: float | None, peer: str = ""
    ) -> None:
        super().__init__(name, handler, request, remaining, peer)
        # ("item", item), then one ("end", None) or ("error", GrpcAbort).
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.credits: trio.Semaphore | None = None  # made on the trio thread

    def put(self, kind: str, value: Any) -> None:
        """Trio thread."""
        with contextlib.suppress(RuntimeError):  # the aio loop is gone: nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def reply(self, value: Any, error: GrpcAbort | None) -> None:
        if error is None:
            self.put("end", None)
        else:
            self.put("error", error)

    def release(self) -> None:
        """Trio thread: the client took an item."""
        if self.credits is not None:
            self.credits.release()


class TrioHandoff:
    """What ``GrpcServer`` does on trio's side; it sets ``_trio_token`` and ``_nursery`` while
    it serves."""

    _grace_s: float
    _trio_token: trio.lowlevel.TrioToken | None
    _nursery: trio.Nursery | None
    _notices_sent: int
    _notices_done: int

    @property
    def grace_s(self) -> float:
        """How long a stopping server lets calls in flight finish."""
        return self._grace_s

    async def hand_over(self, name: str, handle: Callable[[Any], None], request: Any) -> bool:
        """Asyncio thread: ``handle(request)`` on the trio thread, in arrival order; False when
        trio is gone. Returns at once while trio keeps up; once NOTICE_WINDOW requests wait for
        it, only when this one is handled too, so that a busy node slows its senders down
        instead of queueing without bound."""
        queued, handled = self.queue_for_trio(name, handle, request)
        if handled is not None:
            await handled
        return queued

    def queue_for_trio(
        self, name: str, handle: Callable[[Any], None], request: Any
    ) -> tuple[bool, asyncio.Future[None] | None]:
        """``hand_over`` in two steps: whether the request is queued for trio (it will be
        handled), and a future to await before taking the next one when trio is behind."""
        assert self._trio_token is not None
        handled: asyncio.Future[None] | None = None
        if self._notices_sent - self._notices_done >= NOTICE_WINDOW:
            handled = asyncio.get_running_loop().create_future()
        try:
            self._trio_token.run_sync_soon(self._run_notice, name, handle, request, handled)
        except trio.RunFinishedError:
            return False, None
        self._notices_sent += 1  # asyncio thread only; _notices_done is trio's
        return True, handled

    def _run_notice(
        self,
        name: str,
        handle: Callable[[Any], None],
        request: Any,
        handled: asyncio.Future[None] | None,
    ) -> None:
        """Trio thread. An exception must not escape: ``run_sync_soon`` would end the run."""
        try:
            handle(request)
        except Exception:
            log.exception("RPC %s failed", name)
        finally:
            self._notices_done += 1
            if handled is not None:
                with contextlib.suppress(RuntimeError):  # the aio loop is gone
                    handled.get_loop().call_soon_threadsafe(_resolve, handled)

    def start_call(
        self,
        name: str,
        handler: Handler,
        request: Any,
        remaining: float | None,
        peer: str,
        on_answer: Callable[[Any, GrpcAbort | None], None],
    ) -> Any:
        """Asyncio thread: run ``handler(request)`` as a trio task under the deadline, then
        ``on_answer(reply, None)`` or ``on_answer(None, error)`` back on this thread. Returns
        the call (for ``cancel_call``), or None when trio is gone."""
        call = StreamedCall(name, handler, request, remaining, peer, on_answer)
        return call if self._start(call, self._run) else None

    def cancel_call(self, call: Any) -> None:
        """Asyncio thread: nobody wants ``start_call``'s answer any more."""
        self._cancel(call)

    def _start(self, call: TrioCall, run: Callable[[TrioCall], Awaitable[None]]) -> bool:
        """Asyncio thread: start ``run(call)`` in trio; False when trio is gone."""
        assert self._trio_token is not None
        try:
            self._trio_token.run_sync_soon(self._spawn, call, run)
        except trio.RunFinishedError:
            return False
        return True

    def _cancel(self, call: TrioCall) -> None:
        """Asyncio thread: the client cancelled or its deadline passed, so nobody wants the
        answer any more: stop the trio handler as well."""
        assert self._trio_token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._trio_token.run_sync_soon(call.scope.cancel)

    async def _handle(self, call: TrioCall, context: Any) -> Any:
        """Asyncio thread: hand the call to trio and wait for its answer."""
        if not self._start(call, self._run):
            await abort_with(context, SHUTTING_DOWN)
        try:
            value, error = await call.answer
        except asyncio.CancelledError:
            self._cancel(call)
            raise
        if error is not None:
            await abort_with(context, error)
        return value

    async def _handle_stream(self, call: TrioStreamCall, context: Any) -> AsyncIterator[Any]:
        """Asyncio thread: yield what the trio handler emits, until it ends."""
        if not self._start(call, self._run_stream):
            await abort_with(context, SHUTTING_DOWN)
        finished = False
        try:
            while True:
                kind, value = await call.queue.get()
                if kind == "item":
                    yield value
                    assert self._trio_token is not None
                    with contextlib.suppress(trio.RunFinishedError):
                        self._trio_token.run_sync_soon(call.release)
                    continue
                finished = True
                if kind == "error":
                    await abort_with(context, value)
                return
        finally:
            if not finished:
                self._cancel(call)

    def _spawn(self, call: TrioCall, run: Callable[[TrioCall], Awaitable[None]]) -> None:
        """Trio thread."""
        try:
            assert self._nursery is not None
            self._nursery.start_soon(run, call)
        except RuntimeError:  # the nursery is closed: serving() has ended
            call.reply(None, SHUTTING_DOWN)

    async def _run(self, call: TrioCall) -> None:
        async def body() -> Any:
            return await call.handler(call.request)

        await self._guarded(call, body)

    async def _run_stream(self, call: TrioCall) -> None:
        assert isinstance(call, TrioStreamCall)
        credits = call.credits = trio.Semaphore(STREAM_WINDOW)

        async def emit(item: Any) -> None:
            await credits.acquire()
            call.put("item", item)

        async def body() -> None:
            await call.handler(call.request, emit)

        await self._guarded(call, body)

    async def _guarded(self, call: TrioCall, body: Callable[[], Awaitable[Any]]) -> None:
        """Trio thread: run a handler under the call's deadline and answer how it ended."""
        value: Any = None
        error: GrpcAbort | None = SHUTTING_DOWN  # if cancelled from outside (server stopping)
        set_caller(call.peer)  # this task's own context: seen by the handler (caller_host)
        try:
            with call.scope, deadline(call.remaining):
                value, error = await body(), None
        except GrpcAbort as e:
            error = e
        except trio.TooSlowError:
            error = GrpcAbort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{call.name}: deadline exceeded")
        except Exception as e:
            log.exception("RPC %s failed", call.name)
            error = GrpcAbort(grpc.StatusCode.INTERNAL, str(e) or type(e).__name__)
        finally:
            call.reply(value, error)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled when the RPC went away first
        future.set_result(None)
