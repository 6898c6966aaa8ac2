"""CommitFlusher (node/groups/local.py): one fsync per store per round, outcomes to trio."""

from __future__ import annotations

import threading
from typing import Any

import trio
from pysyncobj import FAIL_REASON

from cluster.raft.driver import RaftDriver
from node.groups.local import CommitFlusher, Proposal


class SlowStore:
    """Stands in for a Store: its first fsync waits until the test lets it finish."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.flushes = 0

    def flush_wal(self) -> None:
        self.flushes += 1
        if self.flushes == 1:
            self.entered.set()
            self.release.wait(10)


def test_stop_answers_what_was_handed_over_and_ends_the_thread() -> None:
    results: list[Any] = []

    async def main() -> None:
        driver = RaftDriver(0.05)
        driver.start()
        try:
            flusher = CommitFlusher(driver)
            store = SlowStore()
            first, second, failed = Proposal(flusher), Proposal(flusher), Proposal(flusher)
            flusher._handed.put([(first, b"1", FAIL_REASON.SUCCESS, store)])
            await trio.to_thread.run_sync(store.entered.wait, 10)
            # While the first round is in its fsync: more outcomes, then stop().
            flusher._handed.put(
                [
                    (second, b"2", FAIL_REASON.SUCCESS, store),
                    (failed, None, FAIL_REASON.NOT_LEADER, store),
                ]
            )
            flusher._handed.put(None)  # what stop() queues before it joins the thread
            store.release.set()
            await trio.to_thread.run_sync(flusher._thread.join, 10)
            assert not flusher._thread.is_alive()
            results.append(await first.result(5))
            results.append(await second.result(5))
            try:
                await failed.result(5)
            except Exception as e:  # ProposalError: the failure is passed on, not flushed
                results.append(type(e).__name__)
            results.append(store.flushes)
        finally:
            await trio.to_thread.run_sync(driver.stop)

    trio.run(main)
    # One fsync per round: the second round's two outcomes share one.
    assert results == [b"1", b"2", "ProposalError", 2]
