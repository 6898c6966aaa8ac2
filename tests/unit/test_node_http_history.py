"""``lookup_ids`` reads several slot groups at once: one group without a leader is the API's
503 (ClusterUnavailable), not an ExceptionGroup out of the nursery that became a 500."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio

from node.http.common import ApiContext
from node.http.routes_history import lookup_ids
from node.router import ClusterUnavailable
from proto.wkproto import ReasonCode


def test_a_group_without_a_leader_is_cluster_unavailable_unwrapped() -> None:
    async def read_group(group: int, query: dict[str, Any]) -> list[dict[str, Any]]:
        await trio.sleep(0)
        if group == 2:
            raise ClusterUnavailable(ReasonCode.SYSTEM_ERROR, "group 2: forward_failed")
        return []

    router = SimpleNamespace(placement=SimpleNamespace(groups={1, 2, 3}), read_group=read_group)
    ctx = cast(ApiContext, SimpleNamespace(router=router))
    ids = [(g << 12) | 1 for g in (1, 2, 3)]  # one message id in each group (bits 12-21)

    with pytest.raises(ClusterUnavailable, match="group 2"):
        trio.run(lookup_ids, ctx, ids, "u")
