"""A node without a replica of a group follows NOT_LEADER hints instead of retrying a stale
guess (the bug: the hint was recorded, then discarded, and the same wrong node asked again)."""

from __future__ import annotations

from typing import Any

import trio

from cluster.placement import Placement
from node.router import Router, RouterSettings
from proto.raftchat.peer.v1 import peer_pb2 as pb


def test_forwarding_follows_the_leader_hint() -> None:
    placement = Placement(1, [1] * 256, {1: [2, 3, 4]}, {1: "a", 2: "b", 3: "c", 4: "d"})
    router = Router(
        RouterSettings(node_id=1, grpc_port=1, forward_timeout_s=2.0),
        placement,
        None,  # type: ignore[arg-type]
        lambda *a: None,
        lambda *a: 0,
        lambda *a: [],
    )
    asked: list[int] = []

    async def attempt(target: int) -> Any:
        asked.append(target)
        if target == 4:
            return pb.SendOutcome(reason=1)
        # Node 2 and 3 are followers; both point at node 4.
        return router._status_failure(1, pb.Status(code=pb.Status.NOT_LEADER, leader_hint=4))

    result = trio.run(router._retrying, 1, attempt)
    assert result == pb.SendOutcome(reason=1)
    assert asked == [2, 4]


def test_a_refusal_without_a_hint_moves_to_the_next_replica() -> None:
    placement = Placement(1, [1] * 256, {1: [2, 3, 4]}, {1: "a", 2: "b", 3: "c", 4: "d"})
    router = Router(
        RouterSettings(node_id=1, grpc_port=1, forward_timeout_s=2.0),
        placement,
        None,  # type: ignore[arg-type]
        lambda *a: None,
        lambda *a: 0,
        lambda *a: [],
    )
    asked: list[int] = []

    async def attempt(target: int) -> Any:
        asked.append(target)
        return pb.SendOutcome(reason=1) if target == 3 else "not_leader"

    assert trio.run(router._retrying, 1, attempt) == pb.SendOutcome(reason=1)
    assert asked == [2, 3]
