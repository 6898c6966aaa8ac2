"""The reclaim task: on every slot group this node leads, propose the deletions that expiry,
retention and unfinished range deletions call for (see ``groups/retention.py``).

Only the leader plans, from its own clock and its own replica; the deletions are ordinary
``MessageOp``s, so every replica applies the same ones, and apply re-checks expiry against the
command's time. A follower does nothing here: after a leader change, the new leader picks up
whatever is still due on its next pass.
"""

from __future__ import annotations

import time

import trio

from proto.raftchat.peer.v1 import peer_pb2 as pb

from .groups.retention import plan
from .log import get_logger
from .router import ClusterUnavailable, Router

log = get_logger("reclaim")

INTERVAL_S = 1.0
"""Between passes. A pass over a group with nothing due reads a few index keys only (unless
global retention is on: then it also looks at each channel's oldest messages)."""


async def run_reclaim(router: Router, retention_days: float) -> None:
    while True:
        await trio.sleep(INTERVAL_S)  # a period, not a synchronisation
        for gid, local in list(router.local.items()):
            if gid == 0 or not local.is_leader():
                continue  # the controller group stores no messages
            now_ms = int(time.time() * 1000)
            try:
                ops = await trio.to_thread.run_sync(plan, local.store, now_ms, retention_days)
            except Exception as e:  # the replica was dropped (store closed) mid-pass
                if router.local.get(gid) is local:
                    log.warning("reclaim planning failed", group=gid, error=str(e))
                continue
            for op in ops:
                try:
                    await router.meta(op.channel_id, pb.MetaOp(message=op))
                except ClusterUnavailable as e:
                    log.info("reclaim deferred", group=gid, error=str(e))
                    break  # leadership moved or no quorum: the next pass retries
                except Exception as e:  # never let housekeeping take the node down
                    log.warning("reclaim failed", group=gid, error=str(e))
                    break
