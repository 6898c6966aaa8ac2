"""Users: device tokens (``/user/token``, ``/user/device_quit``), who is online, and the
system uids (senders that the user-level rules let through)."""

from __future__ import annotations

import time

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import DeviceFlag, DeviceLevel

from .common import OK, ApiContext, RouteTable, check_id, meta, uid_list
from .fields import get_int, get_str
from .server import Request, Response, bad_request

_CLIENT_FLAGS = {int(DeviceFlag.APP), int(DeviceFlag.WEB), int(DeviceFlag.PC)}
_LEVELS = {int(DeviceLevel.SLAVE), int(DeviceLevel.MASTER)}
MAX_TOKEN_EXPIRE_S = 0xFFFFFFFF
"""The largest ``expire`` of ``/user/token`` (a uint32, as the gRPC field)."""


async def user_token(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    uid = check_id(get_str(body, "uid", required=True), "uid")
    token = get_str(body, "token", required=True)
    flag = get_int(body, "device_flag", default=DeviceFlag.APP, choices=_CLIENT_FLAGS)
    level = get_int(body, "device_level", default=DeviceLevel.SLAVE, choices=_LEVELS)
    # Seconds from now, as WuKongIM's message `expire` and Tencent's UserSig; stored as a
    # time of this node's clock, so that every replica applies the same record.
    expire = get_int(body, "expire", minimum=0, maximum=MAX_TOKEN_EXPIRE_S)
    expires_at_ms = int(time.time() * 1000) + expire * 1000 if expire else 0
    if ctx.token_keys is not None:
        device = ctx.token_keys.seal(uid, flag, token, level, expires_at_ms)
    else:  # unit tests without a node
        device = pb.DeviceToken(
            uid=uid,
            device_flag=flag,
            token=token,
            device_level=level,
            expires_at_ms=expires_at_ms,
        )
    await meta(ctx, uid, pb.MetaOp(set_device=device))
    if level == DeviceLevel.MASTER:
        # A new master token retires the sessions that logged in with the old one.
        await ctx.router.sessions.kick_everywhere(uid, flag, "token changed")
    return Response(200, OK)


async def device_quit(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    uid = check_id(get_str(body, "uid", required=True), "uid")
    flag = get_int(body, "device_flag", default=-1, choices=_CLIENT_FLAGS | {-1})
    for f in sorted(_CLIENT_FLAGS) if flag == -1 else [flag]:
        auth = await ctx.router.read(uid, {"q": "device", "uid": uid, "device_flag": f})
        if auth is not None:
            op = pb.MetaOp(
                set_device=pb.DeviceToken(
                    uid=uid, device_flag=f, token="", device_level=auth["device_level"]
                )
            )
            await meta(ctx, uid, op)
    await ctx.router.sessions.kick_everywhere(uid, flag, "device quit")
    return Response(200, OK)


async def online_status(ctx: ApiContext, req: Request) -> Response:
    uids = req.json()
    if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
        raise bad_request("body must be a JSON list of uids")
    found = await ctx.router.sessions.online_everywhere(uids)
    return Response(200, [{"uid": u, "device_flag": f, "online": 1} for u, f in found])


async def _set_system(ctx: ApiContext, req: Request, system: bool) -> Response:
    uids = uid_list(req.json_object(), required=True)
    for uid in uids:
        await meta(ctx, uid, pb.MetaOp(user=pb.UserUpdate(uid=uid, system=system)))
    await ctx.facts.changed(uids)
    return Response(200, OK)


async def systemuids_add(ctx: ApiContext, req: Request) -> Response:
    return await _set_system(ctx, req, True)


async def systemuids_remove(ctx: ApiContext, req: Request) -> Response:
    return await _set_system(ctx, req, False)


async def systemuids(ctx: ApiContext, req: Request) -> Response:
    # System flags live in each uid's own slot group: ask every group.
    per_group = await ctx.router.read_every_group({"q": "system_uids"})
    return Response(200, sorted(uid for uids in per_group for uid in uids))


ROUTES: RouteTable = (
    ("POST", "/user/token", user_token),
    ("POST", "/user/device_quit", device_quit),
    ("POST", "/user/onlinestatus", online_status),
    ("POST", "/user/systemuids_add", systemuids_add),
    ("POST", "/user/systemuids_remove", systemuids_remove),
    ("GET", "/user/systemuids", systemuids),
)
