"""A request that failed on a leader retries as soon as the local replica names another one,
not at the end of its backoff (which grows to 0.2 s): after a failover, sends that were stuck
on the dead leader go through with the first news of the new one."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from cluster.placement import Placement
from node.groups.local import LocalGroup
from node.router import Router, RouterSettings

NODES = {1: "a", 2: "b", 3: "c"}


class FakeRaft:
    """What LocalGroup reads of its ReplicatedGroup for leadership."""

    def __init__(self, leader: str | None) -> None:
        self.leader = leader
        self.on_leader_news: Any = None

    def _getLeader(self) -> str | None:
        return self.leader

    def _isLeader(self) -> bool:
        return False


def make_router(raft: FakeRaft) -> Router:
    placement = Placement(1, [1] * 256, {1: [1, 2, 3]}, NODES)
    router = Router(
        RouterSettings(node_id=1, grpc_port=1, forward_timeout_s=2.0),
        placement,
        None,  # type: ignore[arg-type]
        lambda *a: None,
        lambda *a: 0,
        lambda *a: [],
    )
    by_host = {h: n for n, h in NODES.items()}
    router.local[1] = LocalGroup(1, None, None, raft, by_host.get)  # type: ignore[arg-type]
    return router


class _Ok:
    """A non-string result: success for ``_retrying``."""


def retry_times(*, tell: bool) -> list[tuple[float, int]]:
    """(virtual time, target) of each attempt. Node 2 fails; at 0.4 s the local replica
    learns that node 3 leads, and tells the router (``tell``) or not."""
    raft = FakeRaft("b")
    router = make_router(raft)
    asked: list[tuple[float, int]] = []

    async def attempt(target: int) -> Any:
        asked.append((round(trio.current_time(), 4), target))
        return _Ok() if target == 3 else "forward_failed"

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def failover() -> None:
                await trio.sleep(0.4)
                raft.leader = "c"
                if tell:
                    raft.on_leader_news()  # as the Raft driver thread does

            nursery.start_soon(failover)
            assert isinstance(await router._retrying(1, attempt), _Ok)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return asked


def test_a_retry_goes_out_when_another_leader_is_named() -> None:
    asked = retry_times(tell=True)
    # Attempts at 0, .01, .03, .07, .15 and .31 s on node 2; the backoff is then 0.2 s.
    assert [t for _, t in asked[:-1]] == [2] * 6
    assert asked[-1] == (0.4, 3)


def test_without_news_the_retry_waits_out_its_backoff() -> None:
    assert retry_times(tell=False)[-1] == (0.51, 3)
