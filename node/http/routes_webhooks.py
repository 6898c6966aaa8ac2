"""``GET /webhook/status``: this node's webhook sender counters (sent, failed, dropped)."""

from __future__ import annotations

from .common import ApiContext, RouteTable
from .server import Request, Response


async def webhook_status(ctx: ApiContext, req: Request) -> Response:
    # Each node reports its own sender: msg.* events leave from slot group leaders,
    # user.onlinestatus from the node holding the session.
    if ctx.webhooks is None:
        return Response(200, {"enabled": False})
    return Response(200, ctx.webhooks.status())


ROUTES: RouteTable = (("GET", "/webhook/status", webhook_status),)
