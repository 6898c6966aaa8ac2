"""Gathering queued sends into one batch: the send pipeline's Raft batches and the router's
ForwardSends calls both take what arrives within a short window, then what is already queued,
within a count and a size."""

from __future__ import annotations

from typing import Any, TypeVar

import trio

from proto.raftchat.peer.v1 import peer_pb2 as pb

MAX_BATCH_BYTES = 1024 * 1024
"""A batch stops growing at this size (one item may pass it): Raft entries stay far below
pysyncobj's chunking limit (``cluster.raft.conf.MAX_ENTRY_BYTES``), and forwarded batches
below gRPC's message limit."""

Entry = TypeVar("Entry", bound=tuple[pb.SendItem, Any])


async def gather(
    recv: trio.MemoryReceiveChannel[Entry],
    first: Entry,
    *,
    window_s: float,
    window_items: int,
    max_items: int,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[Entry]:
    """``first``, what else arrives within ``window_s`` (up to ``window_items``), then what is
    already queued (up to ``max_items``), until the send items reach ``max_bytes``."""
    batch = [first]
    size = first[0].ByteSize()
    with trio.move_on_after(window_s):
        while len(batch) < window_items and size < max_bytes:
            batch.append(await recv.receive())
            size += batch[-1][0].ByteSize()
    while len(batch) < max_items and size < max_bytes:
        try:
            batch.append(recv.receive_nowait())
        except trio.WouldBlock:
            break
        size += batch[-1][0].ByteSize()
    return batch
