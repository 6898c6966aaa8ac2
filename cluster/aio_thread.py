"""One thread running an asyncio event loop, shared by the gRPC servers of a process.

grpcio's asyncio servers need a running asyncio loop, and the node runs on trio, so they run
in a thread of their own. With one thread (and loop) per server, the public API's idle server
woke for the peer server's traffic: a node spent ~0.8 ms of CPU per acknowledged send in a
thread that served no call (``raftchat bench --rate 50``, rev ``e35a3fe``). Every server of a
node now shares one loop; the loop runs while at least one server uses it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading


class AsyncioThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._users = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def acquire(self) -> asyncio.AbstractEventLoop:
        """The running loop, started by the first user (any thread)."""
        with self._lock:
            if self._users == 0:
                started: concurrent.futures.Future[asyncio.AbstractEventLoop]
                started = concurrent.futures.Future()
                self._thread = threading.Thread(
                    target=self._main, args=(started,), name=self.name, daemon=True
                )
                self._thread.start()
                self._loop = started.result()  # set (or failed) as soon as the thread runs
            self._users += 1
            assert self._loop is not None
            return self._loop

    def release(self) -> threading.Thread | None:
        """One user is done with the loop. The last one stops it and gets the thread to join
        (once everything it scheduled on the loop has finished)."""
        with self._lock:
            if self._users <= 0:
                raise RuntimeError(f"{self.name}: released more often than acquired")
            self._users -= 1
            if self._users > 0:
                return None
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        assert loop is not None
        loop.call_soon_threadsafe(loop.stop)
        return thread

    def _main(self, started: concurrent.futures.Future[asyncio.AbstractEventLoop]) -> None:
        try:
            loop = asyncio.new_event_loop()  # e.g. no file descriptor left for its self-pipe
            asyncio.set_event_loop(loop)
        except BaseException as e:
            started.set_exception(e)  # acquire() raises it instead of waiting for ever
            return
        started.set_result(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
