"""A member's own zone into the cluster map: at start, a node whose ``node.zone`` the map does
not record asks the controller's leader to record it, and asks again until that is done.

The map learns a zone otherwise from ``cluster.nodes`` (``id@host#zone``, for the initial
members) and from a join; this covers the rest: zones given to a cluster made without them (one
rolling restart), an initial member that names its zone in ``node.zone`` only, and a node whose
zone changed. Once recorded, the controller's reconciler spreads the groups over the zones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .admin import AdminError, AdminRefused
from .log import get_logger

log = get_logger("zone")

FIRST_RETRY_S = 1.0
LAST_RETRY_S = 60.0
"""Asking again waits twice as long each time, up to this: a cluster without a controller
leader for long, or one whose leader runs a revision that knows no zones, is asked rarely."""

Ask = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""An admin request to the controller's leader (``Admin.on_controller_leader``)."""


async def report_zone(node_id: int, zone: str, recorded: Callable[[], str], ask: Ask) -> bool:
    """Until the map's zone of ``node_id`` (``recorded``) is ``zone``, ask for it. True once it
    is; False when the cluster refused (logged: asking again would get the same answer)."""
    wait = FIRST_RETRY_S
    while recorded() != zone:
        try:
            await ask({"op": "zone", "node_id": node_id, "zone": zone})
        except AdminRefused as e:
            log.error("the cluster refused to record this node's zone", zone=zone, error=str(e))
            return False
        except AdminError as e:
            log.warning(
                "could not record this node's zone yet; asking again",
                zone=zone,
                error=str(e),
                retry_s=wait,
            )
            await trio.sleep(wait)  # nothing signals that a controller leader can be asked
            wait = min(wait * 2, LAST_RETRY_S)
            continue
        log.info("zone recorded in the cluster map", zone=zone or "none")
        return True
    return True
