"""The cluster as a whole: health, status, each node's replica digests, membership
(``/cluster/leave``, ``/cluster/drain``) and which node a client should connect to
(``/route``). ``/cluster/*`` needs the admin credential (``auth.py``)."""

from __future__ import annotations

from typing import Any

import trio

from ..admin import AdminError, AdminRefused
from ..client_routes import ClientRoutes, NoNodeAccepting
from ..groups.digest import channel_digests
from .common import ApiContext, RouteTable, check_id
from .fields import get_int, get_str
from .server import ApiError, Request, Response, bad_request

MAX_ROUTE_BATCH = 10_000


async def health(ctx: ApiContext, req: Request) -> Response:
    if ctx.client_routes is not None and ctx.client_routes.draining:
        return Response(503, {"status": "draining", "msg": "this node is leaving service"})
    if ctx.router.groups_ready():
        return Response(200, {"status": "ok"})
    return Response(503, {"status": "error", "msg": "a slot group has no leader yet"})


async def cluster_status(ctx: ApiContext, req: Request) -> Response:
    status = ctx.router.status()
    # The members' zones (node id -> zone, for those that gave one; docs/operations.md).
    status["zones"] = {str(n): z for n, z in sorted(ctx.router.placement.zones.items())}
    if ctx.client_routes is not None:
        status["draining"] = sorted(ctx.client_routes.draining_nodes())
    return Response(200, status)


async def cluster_digest(ctx: ApiContext, req: Request) -> Response:
    """This node's own replica of every slot group it hosts, as stored here (no barrier, no
    forwarding): the point is to compare replicas, see ``groups/digest.py``."""
    groups = []
    for gid, local in sorted(ctx.router.local.items()):
        if gid == 0:
            continue  # the controller group stores no messages
        try:
            applied, channels = await trio.to_thread.run_sync(channel_digests, local.store)
        except Exception:
            if ctx.router.local.get(gid) is local:
                raise
            continue  # dropped (its store closed) while being read: no longer hosted here
        groups.append(
            {
                "group": gid,
                "applied": applied,
                "commit": local.view.commit_index,
                "is_leader": local.is_leader(),
                "leader": local.leader_id(),
                "channels": channels,
            }
        )
    return Response(200, {"node": ctx.config.node.id, "groups": groups})


def _node_id(body: dict[str, Any]) -> int:
    return get_int(body, "node_id", required=True, minimum=1, maximum=1023)


def _member(ctx: ApiContext, body: dict[str, Any]) -> int:
    node_id = _node_id(body)
    if node_id not in ctx.router.placement.nodes:
        raise ApiError(404, f"node {node_id} is not a member")
    return node_id


async def _membership(ctx: ApiContext, request: dict[str, Any]) -> Response:
    try:
        reply = await ctx.admin.on_controller_leader(request)
    except AdminRefused as e:
        raise ApiError(409, str(e)) from None
    except AdminError as e:
        raise ApiError(503, str(e)) from None
    return Response(200, {"status": 200, **reply})


async def cluster_join(ctx: ApiContext, req: Request) -> Response:
    # Nothing here can prove the cluster password, so nothing here admits a node: a node
    # joins with its own signed call (node/admin.py). The route stays to say so (after
    # the usual answers to a malformed body).
    body = req.json_object()
    node_id = _node_id(body)
    get_str(body, "host", required=True)
    raise ApiError(
        410,
        f"nothing was changed: node {node_id} joins by itself, started with cluster.join "
        "set to a member's node.host and the cluster password (docs/operations.md)",
    )


async def cluster_leave(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    node_id = _node_id(body)
    force = get_int(body, "force", minimum=0, maximum=1) or 0
    if node_id not in ctx.router.placement.nodes:
        raise ApiError(404, f"node {node_id} is not a member")
    return await _membership(ctx, {"op": "leave", "node_id": node_id, "force": bool(force)})


async def cluster_drain(ctx: ApiContext, req: Request) -> Response:
    node_id = _member(ctx, req.json_object())
    try:
        await ctx.admin.call(node_id, {"op": "drain"})
    except AdminError as e:
        raise ApiError(503, str(e)) from None
    return Response(200, {"status": 200, "node_id": node_id, "draining": True})


def _client_routes(ctx: ApiContext) -> ClientRoutes:
    assert ctx.client_routes is not None
    return ctx.client_routes


def _intranet(req: Request) -> bool:
    value = req.query.get("intranet", "0")
    if value not in ("0", "1"):
        raise bad_request("intranet must be 0 or 1")
    return value == "1"


async def client_route(ctx: ApiContext, req: Request) -> Response:
    uid = req.query.get("uid") or None
    if uid is not None:
        check_id(uid, "uid")
    try:
        return Response(200, _client_routes(ctx).route(uid, _intranet(req)))
    except NoNodeAccepting as e:
        raise ApiError(503, str(e)) from None


async def client_route_batch(ctx: ApiContext, req: Request) -> Response:
    uids = req.json()
    if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
        raise bad_request("the body must be a JSON array of uids")
    if len(uids) > MAX_ROUTE_BATCH:
        raise bad_request(f"at most {MAX_ROUTE_BATCH} uids per request")
    for uid in uids:
        check_id(uid, "uid")
    try:
        return Response(200, _client_routes(ctx).route_batch(uids, _intranet(req)))
    except NoNodeAccepting as e:
        raise ApiError(503, str(e)) from None


ROUTES: RouteTable = (
    ("GET", "/health", health),
    ("GET", "/cluster/status", cluster_status),
    ("GET", "/cluster/digest", cluster_digest),
    ("POST", "/cluster/join", cluster_join),
    ("POST", "/cluster/leave", cluster_leave),
    ("POST", "/cluster/drain", cluster_drain),
    ("GET", "/route", client_route),
    ("POST", "/route/batch", client_route_batch),
)
