"""Send batches (node/groups/batching.py): bounded by count and by size."""

from __future__ import annotations

import trio

from node.groups.batching import MAX_BATCH_BYTES, gather
from proto.raftchat.peer.v1 import peer_pb2 as pb


def entries(n: int, payload: int) -> list[tuple[pb.SendItem, int]]:
    return [(pb.SendItem(channel_id="c", payload=b"x" * payload), i) for i in range(n)]


def batches_of(queued: list[tuple[pb.SendItem, int]], **limits: int) -> list[list[int]]:
    """Gather everything queued into consecutive batches; their entries' numbers."""

    async def main() -> list[list[int]]:
        send, recv = trio.open_memory_channel[tuple[pb.SendItem, int]](len(queued))
        for entry in queued:
            send.send_nowait(entry)
        out: list[list[int]] = []
        while sum(map(len, out)) < len(queued):
            batch = await gather(recv, recv.receive_nowait(), window_s=0.001, **limits)
            out.append([n for _, n in batch])
        return out

    return trio.run(main)


def test_a_batch_stops_at_the_count() -> None:
    got = batches_of(entries(7, 10), window_items=3, max_items=3)
    assert got == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_batch_stops_growing_once_its_items_pass_the_size() -> None:
    size = 400 * 1024  # three pass MAX_BATCH_BYTES: the third still goes in, the fourth not
    got = batches_of(entries(5, size), window_items=100, max_items=100)
    assert got == [[0, 1, 2], [3, 4]]
    assert 2 * size < MAX_BATCH_BYTES <= 3 * size
