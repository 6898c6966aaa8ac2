"""A draining node asks again a node that did not hear it at first (one that restarted a moment
ago, whose channel is still reconnecting), so that it stops handing the draining node out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio

from node import drain as drain_module
from node.drain import Drain
from node.route_failures import Failure


class Router:
    def __init__(self, deaf: dict[int, int]) -> None:
        self.placement = SimpleNamespace(nodes={1: "a", 2: "b", 3: "c"})
        self.deaf = deaf  # node -> how many calls fail before it hears
        self.asked: list[int] = []

    async def call_node(self, node_id: int, method: str, request: Any) -> Any:
        assert method == "Admin"
        self.asked.append(node_id)
        if self.deaf.get(node_id, 0) > 0:
            self.deaf[node_id] -= 1
            return Failure.FORWARD_FAILED
        return SimpleNamespace(reply=b"{}")


def announce(router: Router) -> None:
    node = SimpleNamespace(config=SimpleNamespace(node=SimpleNamespace(id=1)), router=router)
    trio.run(Drain(node)._announce)  # type: ignore[arg-type]


def test_a_node_that_did_not_hear_is_asked_again_until_it_does() -> None:
    router = Router({3: 2})
    announce(router)
    assert sorted(router.asked) == [2, 3, 3, 3]


def test_a_node_that_never_hears_is_given_up_on_in_time(monkeypatch: Any) -> None:
    monkeypatch.setattr(drain_module, "ANNOUNCE_RETRY_S", 0.3)
    router = Router({3: 10_000})
    announce(router)
    assert router.asked.count(2) == 1 and 2 <= router.asked.count(3) < 10
