"""One thread that owns and ticks every pysyncobj group of the node.

pysyncobj gives each ``SyncObj`` its own tick thread and poller; at a tick fast enough for
millisecond commits that costs ~2.3 % of a core per idle group (ADR 005). Here every group is
built with ``autoTick=False`` around one shared poller, so the thread sleeps in a single
``poll()`` over all Raft sockets and wakes on network input, on a proposal (pysyncobj's pipe
notifier sits in the same poller) or on the tick interval, then ticks each group once.

Everything that touches a group's internals (construction, destruction, membership calls) runs
on this thread through ``call``; proposals go straight to pysyncobj's thread-safe queue.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pysyncobj.syncobj as _syncobj_module
from pysyncobj.poller import POLL_EVENT_TYPE, PollPoller

T = TypeVar("T")
log = logging.getLogger("raftchat.raft")

# pysyncobj shouts at CRITICAL when a follower re-receives entries it already has (it truncates
# and re-appends identical entries in non-batch mode). Keep it visible but not alarming.
logging.getLogger("pysyncobj.syncobj").setLevel(logging.ERROR)
logging.getLogger("pysyncobj.journal").setLevel(logging.ERROR)


@contextlib.contextmanager
def _shared_poller(poller: PollPoller) -> Iterator[None]:
    """Make the next ``SyncObj`` constructed on this thread use ``poller``."""
    original = _syncobj_module.createPoller
    _syncobj_module.createPoller = lambda _kind: poller
    try:
        yield
    finally:
        _syncobj_module.createPoller = original


class RaftDriver:
    def __init__(self, tick_interval_s: float = 0.05, name: str = "raft") -> None:
        self.tick_interval_s = tick_interval_s
        self._poller = PollPoller()
        self._groups: dict[str, Any] = {}
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._calls = queue.SimpleQueue()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self._poller.subscribe(self._wake_r, self._drain_wake, POLL_EVENT_TYPE.READ)
        self._thread = threading.Thread(target=self._run, name=f"{name}-driver", daemon=True)
        self.ticks = 0

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        self._stopping = True
        self.wake()
        self._thread.join(timeout_s)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    # --- calls into the driver thread ------------------------------------------------------

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the driver thread; the future holds its result or exception."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if threading.current_thread() is self._thread:
            _run_into(fn, fut)
            return fut
        self._calls.put((fn, fut))
        self.wake()
        return fut

    def add_group(self, name: str, factory: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Construct a ``SyncObj`` (with ``autoTick=False``) on the driver thread, around the
        shared poller, and start ticking it."""

        def build() -> T:
            if name in self._groups:
                raise ValueError(f"raft group {name} already exists")
            with _shared_poller(self._poller):
                obj = factory()
            self._groups[name] = obj
            return obj

        return self.call(build)

    def remove_group(self, name: str) -> concurrent.futures.Future[None]:
        def drop() -> None:
            obj = self._groups.pop(name, None)
            if obj is not None:
                _destroy(obj)

        return self.call(drop)

    def group(self, name: str) -> Any:
        return self._groups.get(name)

    def group_names(self) -> list[str]:
        return list(self._groups)

    # --- the loop -------------------------------------------------------------------------

    def _drain_wake(self, _fd: int, _event: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._run_calls()
                for obj in list(self._groups.values()):
                    try:
                        obj.doTick(0.0)
                    except Exception:
                        log.exception("raft group tick failed")
                self.ticks += 1
                self._poller.poll(self.tick_interval_s)
        finally:
            self._run_calls()
            for obj in list(self._groups.values()):
                _destroy(obj)
            self._groups.clear()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run_calls(self) -> None:
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            _run_into(fn, fut)


def _run_into(fn: Callable[[], T], fut: concurrent.futures.Future[T]) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        fut.set_result(fn())
    except BaseException as e:  # handed to the caller, who decides
        fut.set_exception(e)


def _destroy(obj: Any) -> None:
    # ``destroy()`` only flags the object when autoTick is off; ``_doDestroy`` closes its
    # sockets and journal now, on this thread, which owns them.
    try:
        obj._doDestroy()
    except Exception:
        log.exception("destroying a raft group failed")
