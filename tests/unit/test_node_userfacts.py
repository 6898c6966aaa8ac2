"""The node-side user-facts cache: TTL, invalidation, and a load racing an invalidation."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from node.userfacts import UserFacts


class FakeRouter:
    """Serves ``user_facts`` reads from a dict; a read can be held open with ``gate``."""

    def __init__(self) -> None:
        self.send_ban: dict[str, bool] = {}
        self.reads = 0
        self.gate: trio.Event | None = None
        self.broadcasts: list[list[str]] = []

    async def read(self, key: str, query: dict[str, Any]) -> dict[str, Any]:
        assert query == {"q": "user_facts", "uid": key}
        self.reads += 1
        doc = {
            "uid": key,
            "ban": False,
            "send_ban": self.send_ban.get(key, False),
            "allow_stranger": False,
            "deny": [],
            "allow": [],
            "system": False,
        }
        if self.gate is not None:
            await self.gate.wait()
        return doc

    async def call_other_nodes(self, method: str, request: Any) -> list[Any]:
        assert method == "Invalidate"
        self.broadcasts.append(list(request.uids))
        return []


def test_cached_until_ttl_or_invalidation() -> None:
    async def main() -> None:
        router = FakeRouter()
        facts = UserFacts(router, ttl_s=5.0)  # type: ignore[arg-type]
        assert not (await facts.get("a")).send_ban
        router.send_ban["a"] = True
        assert not (await facts.get("a")).send_ban  # cached
        assert router.reads == 1
        await facts.changed(["a"])
        assert router.broadcasts == [["a"]]
        assert (await facts.get("a")).send_ban
        router.send_ban["a"] = False
        await trio.sleep(5.1)  # autojump clock: virtual time
        assert not (await facts.get("a")).send_ban
        assert router.reads == 3

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_load_racing_an_invalidation_is_not_cached() -> None:
    async def main() -> None:
        router = FakeRouter()
        facts = UserFacts(router)  # type: ignore[arg-type]
        router.gate = trio.Event()
        got: list[bool] = []

        async def load() -> None:
            got.append((await facts.get("a")).send_ban)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load)
            await trio.testing.wait_all_tasks_blocked()
            # the read has the old facts in hand; the change commits and is announced
            router.send_ban["a"] = True
            facts.drop(["a"])
            router.gate.set()
        assert got == [False]  # the racing send used what it read ...
        router.gate = None
        assert (await facts.get("a")).send_ban  # ... but it was not cached
        assert router.reads == 2

    trio.run(main)
