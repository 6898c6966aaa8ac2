"""Whom ``Router._retrying`` asks next, and when.

* A node without a replica of a group follows NOT_LEADER hints instead of retrying a stale
  guess (the bug: the hint was recorded, then discarded, and the same wrong node asked again).
* A request that failed on a leader retries as soon as the local replica names another one,
  not at the end of its backoff (which grows to 0.2 s): after a failover, sends that were stuck
  on the dead leader go through with the first news of the new one (ADR 010)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from cluster.placement import Placement
from cluster.raft.group import GroupView
from node.groups.local import LocalGroup
from node.route_failures import Failure
from node.router import Router, RouterSettings
from proto.raftchat.peer.v1 import peer_pb2 as pb


def bare_router(placement: Placement) -> Router:
    """Node 1's router, with no peers to call and no sessions."""
    return Router(
        RouterSettings(node_id=1, grpc_port=1, forward_timeout_s=2.0),
        placement,
        None,  # type: ignore[arg-type]
        lambda *a: None,
        lambda *a: 0,
        lambda *a: [],
    )


def test_forwarding_follows_the_leader_hint() -> None:
    placement = Placement(1, [1] * 256, {1: [2, 3, 4]}, {1: "a", 2: "b", 3: "c", 4: "d"})
    router = bare_router(placement)
    asked: list[int] = []

    async def attempt(target: int) -> Any:
        asked.append(target)
        if target == 4:
            return pb.SendOutcome(reason=1)
        # Node 2 and 3 are followers; both point at node 4.
        return router.status_failure(1, pb.Status(code=pb.Status.NOT_LEADER, leader_hint=4))

    result = trio.run(router._retrying, 1, attempt)
    assert result == pb.SendOutcome(reason=1)
    assert asked == [2, 4]


def test_a_refusal_without_a_hint_moves_to_the_next_replica() -> None:
    placement = Placement(1, [1] * 256, {1: [2, 3, 4]}, {1: "a", 2: "b", 3: "c", 4: "d"})
    router = bare_router(placement)
    asked: list[int] = []

    async def attempt(target: int) -> Any:
        asked.append(target)
        return pb.SendOutcome(reason=1) if target == 3 else Failure.NOT_LEADER

    assert trio.run(router._retrying, 1, attempt) == pb.SendOutcome(reason=1)
    assert asked == [2, 3]


# --- retries on leader news -------------------------------------------------------------

NODES = {1: "a", 2: "b", 3: "c"}


class FakeRaft:
    """What LocalGroup reads of its ReplicatedGroup for leadership."""

    def __init__(self, leader: str | None) -> None:
        self.leader = leader
        self.on_leader_news: Any = None

    @property
    def view(self) -> GroupView:
        return GroupView(is_leader=False, leader=self.leader)


def make_router(raft: FakeRaft) -> Router:
    router = bare_router(Placement(1, [1] * 256, {1: [1, 2, 3]}, NODES))
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
        return _Ok() if target == 3 else Failure.FORWARD_FAILED

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
