"""Snowflake message ids: 41 bits of milliseconds, 10 bits of node id, 12 bits of sequence.

Ids sort by time across the cluster and never repeat as long as node ids are unique (1..1023)
and a node's clock does not jump back by more than the time it was down.
"""

from __future__ import annotations

import time

EPOCH_MS = 1_700_000_000_000  # 2023-11-14; leaves ~69 years of range
_SEQ_BITS = 12
_NODE_BITS = 10


class SnowflakeIds:
    def __init__(self, node_id: int) -> None:
        if not 0 <= node_id < (1 << _NODE_BITS):
            raise ValueError(f"node id {node_id} does not fit {_NODE_BITS} bits")
        self._node = node_id
        self._last_ms = 0
        self._seq = 0

    def next(self) -> int:
        now = int(time.time() * 1000)
        # Never go backwards, even if the wall clock does: keep counting on the last millisecond.
        now = max(now, self._last_ms)
        if now == self._last_ms:
            self._seq = (self._seq + 1) & ((1 << _SEQ_BITS) - 1)
            if self._seq == 0:
                now += 1  # 4096 ids in one millisecond: borrow the next one
        else:
            self._seq = 0
        self._last_ms = now
        return (
            ((now - EPOCH_MS) << (_NODE_BITS + _SEQ_BITS)) | (self._node << _SEQ_BITS) | self._seq
        )
