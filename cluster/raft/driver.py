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
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pysyncobj.poller import POLL_EVENT_TYPE, Poller, PollPoller

from . import pysyncobj_seam as seam
from . import wire
from .guard import ConnectionGuard

T = TypeVar("T")
log = logging.getLogger("raftchat.raft")

# pysyncobj shouts at CRITICAL when a follower re-receives entries it already has (it truncates
# and re-appends identical entries in non-batch mode). Keep it visible but not alarming.
logging.getLogger("pysyncobj.syncobj").setLevel(logging.ERROR)
logging.getLogger("pysyncobj.journal").setLevel(logging.ERROR)


class _GroupPoller(Poller):  # type: ignore[misc]
    """The poller one group sees. Its sockets (and its proposal pipe) go into the driver's
    shared poller with callbacks that first mark the group as having work; polling itself is
    the driver's, once per pass, so ``doTick`` polls nothing."""

    def __init__(
        self, shared: PollPoller, mark: Callable[[], None], raft_guard: ConnectionGuard
    ) -> None:
        self._shared = shared
        self._mark = mark
        self.raft_guard = raft_guard  # found by the group's connections (guard.py)

    def subscribe(self, descr: int, callback: Callable[[int, int], None], event_mask: int) -> None:
        mark = self._mark

        def marked(fd: int, event: int) -> None:
            mark()
            callback(fd, event)

        self._shared.subscribe(descr, marked, event_mask)

    def unsubscribe(self, descr: int) -> None:
        self._shared.unsubscribe(descr)

    def poll(self, timeout: float) -> None:
        pass  # doTick(0.0) asks for a zero-timeout poll: the driver's own poll covers it


class RaftDriver:
    def __init__(self, tick_interval_s: float = 0.05, name: str = "raft") -> None:
        wire.install()  # authenticated, uncompressed Raft frames for every group (ADR 009)
        self.tick_interval_s = tick_interval_s
        self._poller = PollPoller()
        # Incoming Raft connections of every group that have not authenticated yet (guard.py).
        self.guard = ConnectionGuard()
        self._groups: dict[str, Any] = {}
        # Groups that had socket or proposal events since their last tick: ticked in the next
        # pass. Every group is ticked at least once per tick interval (heartbeats, elections).
        self._dirty: set[str] = set()
        self._next_full_pass = 0.0
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._calls = queue.SimpleQueue()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self._poller.subscribe(self._wake_r, self._drain_wake, POLL_EVENT_TYPE.READ)
        self._thread = threading.Thread(target=self._run, name=f"{name}-driver", daemon=True)
        self._after_pass: list[Callable[[], None]] = []
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
            poller = _GroupPoller(self._poller, lambda: self._dirty.add(name), self.guard)
            with seam.group_poller(poller):
                obj = factory()
            self._groups[name] = obj
            self._dirty.add(name)
            return obj

        return self.call(build)

    def remove_group(self, name: str) -> concurrent.futures.Future[None]:
        def drop() -> None:
            self._dirty.discard(name)
            obj = self._groups.pop(name, None)
            if obj is not None:
                _destroy(obj)

        return self.call(drop)

    def add_after_pass(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` on the driver thread after every pass over the groups, i.e. after the
        commands that pass applied (for work that is cheaper once per pass than per command)."""
        self._after_pass.append(hook)  # from any thread: the loop reads the list by index

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
                ran_calls = self._run_calls()
                now = time.monotonic()
                full = ran_calls or now >= self._next_full_pass
                if full:
                    self._next_full_pass = now + self.tick_interval_s
                    try:
                        self.guard.sweep()  # connections past their deadline to authenticate
                    except Exception:
                        log.exception("closing unauthenticated raft connections failed")
                # A pass ticks only the groups with news unless a full pass is due: with nine
                # groups per node, ticking all of them on every socket event was most of the
                # driver's CPU under load.
                for name, obj in list(self._groups.items()):
                    if not full and name not in self._dirty:
                        continue
                    self._dirty.discard(name)
                    try:
                        obj.doTick(0.0)
                        if _lone_leader_behind(obj):
                            self._dirty.add(name)
                    except Exception:
                        log.exception("raft group tick failed")
                self._run_after_pass()
                self.ticks += 1
                # A dropped group's pipe may still mark its name: only live groups count.
                self._dirty &= self._groups.keys()
                wait = 0.0 if self._dirty else self._next_full_pass - time.monotonic()
                try:
                    # Sockets' callbacks run pysyncobj's message handling: one that raises must
                    # not end the thread that runs every group of the node.
                    self._poller.poll(max(0.0, wait))
                except Exception:
                    log.exception("raft message handling failed")
        finally:
            self._run_calls()
            for obj in list(self._groups.values()):
                _destroy(obj)
            self._groups.clear()
            self._run_after_pass()  # outcomes that the last pass or the teardown gave
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run_after_pass(self) -> None:
        for hook in self._after_pass:
            try:
                hook()
            except Exception:
                log.exception("raft after-pass hook failed")

    def _run_calls(self) -> bool:
        ran = False
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return ran
            _run_into(fn, fut)
            ran = True


def _lone_leader_behind(obj: Any) -> bool:
    """A group without other members commits what it appended only in its next tick (pysyncobj
    computes the commit index before it appends), and no socket event will come to ask for
    that tick."""
    if seam.other_nodes(obj):
        return False
    return seam.is_leader(obj) and seam.commit_index(obj) < seam.journal(obj)[-1][1]


def _run_into(fn: Callable[[], T], fut: concurrent.futures.Future[T]) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        fut.set_result(fn())
    except BaseException as e:  # handed to the caller, who decides
        fut.set_exception(e)


def _destroy(obj: Any) -> None:
    # Now, on this thread, which owns its sockets and journal.
    try:
        seam.destroy_now(obj)
    except Exception:
        log.exception("destroying a raft group failed")
