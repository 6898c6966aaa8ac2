"""The asyncio thread that a process's gRPC servers share."""

from __future__ import annotations

import asyncio
import threading

from cluster.aio_thread import AsyncioThread


def _thread_of(loop: asyncio.AbstractEventLoop) -> str:
    async def name() -> str:
        return threading.current_thread().name

    return asyncio.run_coroutine_threadsafe(name(), loop).result(5)


def test_users_share_one_loop_until_the_last_one_leaves() -> None:
    host = AsyncioThread("shared-loop")
    first = host.acquire()
    second = host.acquire()
    assert first is second
    assert _thread_of(first) == "shared-loop"
    assert host.release() is None  # one user left: the loop keeps running
    assert _thread_of(second) == "shared-loop"
    thread = host.release()
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive() and first.is_closed()


def test_a_loop_is_started_again_after_it_stopped() -> None:
    host = AsyncioThread("again")
    loop = host.acquire()
    thread = host.release()
    assert thread is not None
    thread.join(5)
    again = host.acquire()
    assert again is not loop and _thread_of(again) == "again"
    end = host.release()
    assert end is not None
    end.join(5)
