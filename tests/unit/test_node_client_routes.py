"""``/route``'s choice of node (node/client_routes.py): stable per uid, spread, and moving only
the users of a node that goes away."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
import trio

from cluster.bridge import GrpcAbort
from node.client_routes import LIVE_S, ClientRoutes, NoNodeAccepting, pick
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


def test_a_draining_node_is_not_handed_out_until_it_answers_again() -> None:
    now = [0.0]
    # A poll answered by node 2 with what it said before it began to drain arrives after
    # its word that it drains: that answer must not bring it back.
    late_reply = [False]

    async def call_each(method: str, req: Any, timeout_s: float) -> Mapping[int, Any]:
        if late_reply[0]:
            routes.peer_draining(2)  # the word lands while the poll is out
        return {2: endpoints(2), 3: endpoints(3)}

    routes = ClientRoutes(1, endpoints(1), lambda: [1, 2, 3], call_each, clock=lambda: now[0])
    on_two = next(u for u in UIDS if pick(u, [1, 2, 3]) == 2)

    async def main() -> None:
        await routes.poll()
        assert routes.route(on_two, intranet=False)["tcp_addr"] == "n2.example:5100"
        routes.peer_draining(2)
        assert set(routes.live()) == {1, 3}
        assert routes.draining_nodes() == {2}
        assert routes.route(on_two, intranet=False)["tcp_addr"] != "n2.example:5100"
        late_reply[0] = True
        now[0] += 1
        await routes.poll()
        assert set(routes.live()) == {1, 3}, "an answer from before the drain brought it back"
        late_reply[0] = False
        now[0] += 1
        await routes.poll()  # answered a poll that began after the word: started anew
        assert set(routes.live()) == {1, 2, 3} and routes.draining_nodes() == set()

    trio.run(main)


def test_a_draining_node_hands_out_the_others_and_answers_no_poll() -> None:
    async def call_each(method: str, req: Any, timeout_s: float) -> Mapping[int, Any]:
        return {2: endpoints(2)}

    routes = ClientRoutes(1, endpoints(1), lambda: [1, 2], call_each, clock=lambda: 0.0)

    async def main() -> None:
        await routes.poll()
        routes.draining = True
        assert routes.draining_nodes() == {1}
        assert {g["tcp_addr"] for g in routes.route_batch(UIDS[:50], False)} == {"n2.example:5100"}
        assert routes.route(None, intranet=False)["tcp_addr"] == "n2.example:5100"
        with pytest.raises(GrpcAbort):
            await routes.rpc_endpoints(pb.EndpointsRequest())
        routes.peer_draining(2)
        with pytest.raises(NoNodeAccepting):
            routes.route("anyone", intranet=False)

    trio.run(main)
