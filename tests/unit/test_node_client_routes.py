"""``/route``'s choice of node (node/client_routes.py): stable per uid, spread, and moving only
the users of a node that goes away."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import trio

from node.client_routes import LIVE_S, ClientRoutes, pick
from proto.raftchat.peer.v1 import peer_pb2 as pb

UIDS = [f"user{i}" for i in range(3000)]


def test_users_spread_evenly_and_a_lost_node_moves_only_its_own() -> None:
    before = {u: pick(u, [1, 2, 3]) for u in UIDS}
    counts = Counter(before.values())
    assert all(800 < counts[n] < 1200 for n in (1, 2, 3)), counts
    after = {u: pick(u, [1, 3]) for u in UIDS}
    assert all(after[u] == before[u] for u in UIDS if before[u] != 2)
    moved = Counter(after[u] for u in UIDS if before[u] == 2)
    assert set(moved) == {1, 3} and min(moved.values()) > 300  # spread, not piled on one
    # Order of the node list does not matter.
    assert all(pick(u, [3, 1, 2]) == before[u] for u in UIDS[:200])


def endpoints(n: int) -> pb.EndpointsReply:
    return pb.EndpointsReply(
        tcp_addr=f"n{n}.example:5100",
        ws_addr=f"ws://n{n}.example:5200",
        intranet_tcp_addr=f"10.0.0.{n}:5100",
        intranet_ws_addr=f"ws://10.0.0.{n}:5200",
    )


def test_a_node_that_stops_answering_is_no_longer_handed_out() -> None:
    now = [0.0]
    answering = {2, 3}

    async def call_each(method: str, req: Any, timeout_s: float) -> Mapping[int, Any]:
        assert method == "Endpoints"
        return {n: endpoints(n) for n in sorted(answering)}

    routes = ClientRoutes(1, endpoints(1), lambda: [1, 2, 3], call_each, clock=lambda: now[0])

    async def main() -> None:
        assert set(routes.live()) == {1}  # nothing heard yet: only itself
        await routes.poll()
        assert set(routes.live()) == {1, 2, 3}
        uid = next(u for u in UIDS if pick(u, [1, 2, 3]) == 3)
        assert routes.route(uid, intranet=False)["tcp_addr"] == "n3.example:5100"
        assert routes.route(uid, intranet=True)["tcp_addr"] == "10.0.0.3:5100"
        answering.discard(3)
        now[0] += LIVE_S / 2
        await routes.poll()
        assert set(routes.live()) == {1, 2, 3}  # not yet overdue
        now[0] += LIVE_S
        await routes.poll()
        assert set(routes.live()) == {1, 2}
        assert routes.route(uid, intranet=False)["tcp_addr"] != "n3.example:5100"
        assert routes.route(None, intranet=False)["tcp_addr"] == "n1.example:5100"
        batch = routes.route_batch(UIDS[:100], intranet=False)
        assert sorted(u for g in batch for u in g["uids"]) == sorted(UIDS[:100])
        assert {g["tcp_addr"] for g in batch} == {"n1.example:5100", "n2.example:5100"}

    trio.run(main)
