"""The HTTP API routes of the first issue, with WuKongIM v2 request bodies and envelopes.

Errors are HTTP 400 ``{"msg": ..., "status": 400}`` naming the field; permission refusals of
``/message/send`` are 403 with the reason code; see ``docs/api.md``.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from typing import Any

from proto.wkproto import ChannelType, DeviceFlag, DeviceLevel, HeaderFlag, ReasonCode

from ..channels import canonical_channel_id, id_problem
from ..config import Config
from ..meta import MetaWriter
from ..pipeline import SYSTEM_UID, SendPipeline, SendRequest, request_problem
from ..sessions import SessionRegistry
from ..storage import ChannelInfo, DeviceRecord, Store
from .fields import get_flag, get_int, get_str, get_str_list
from .server import ApiError, Request, Response, Router, bad_request

_CLIENT_FLAGS = {int(DeviceFlag.APP), int(DeviceFlag.WEB), int(DeviceFlag.PC)}
_LEVELS = {int(DeviceLevel.SLAVE), int(DeviceLevel.MASTER)}
_SUPPORTED_SEND_TYPES = {int(ChannelType.PERSON), int(ChannelType.GROUP)}
_OK = {"status": 200}


@dataclass
class ApiContext:
    config: Config
    store: Store
    meta: MetaWriter
    registry: SessionRegistry
    pipeline: SendPipeline


def _check_id(value: str, what: str) -> str:
    problem = id_problem(value, what)
    if problem is not None:
        raise bad_request(problem)
    return value


def build_router(ctx: ApiContext) -> Router:
    r = Router()

    @r.route("GET", "/health")
    async def health(req: Request) -> Response:
        return Response(200, {"status": "ok"})

    @r.route("GET", "/route")
    async def route(req: Request) -> Response:
        gw, host = ctx.config.gateway, ctx.config.node.host
        tcp = gw.external_tcp_addr or f"{host}:{gw.tcp_port}"
        ws = gw.external_ws_addr or f"ws://{host}:{gw.ws_port}"
        return Response(200, {"tcp_addr": tcp, "ws_addr": ws, "wss_addr": ""})

    @r.route("POST", "/user/token")
    async def user_token(req: Request) -> Response:
        body = req.json_object()
        uid = _check_id(get_str(body, "uid", required=True), "uid")
        token = get_str(body, "token", required=True)
        flag = get_int(body, "device_flag", default=DeviceFlag.APP, choices=_CLIENT_FLAGS)
        level = get_int(body, "device_level", default=DeviceLevel.SLAVE, choices=_LEVELS)
        await ctx.meta.set_device(uid, flag, DeviceRecord(token=token, device_level=level))
        if level == DeviceLevel.MASTER:
            # A new master token retires the sessions that logged in with the old one.
            for s in ctx.registry.of_flag(uid, flag):
                s.kick(ReasonCode.CONNECT_KICK, "token changed")
        return Response(200, _OK)

    @r.route("POST", "/user/device_quit")
    async def device_quit(req: Request) -> Response:
        body = req.json_object()
        uid = _check_id(get_str(body, "uid", required=True), "uid")
        flag = get_int(body, "device_flag", default=-1, choices=_CLIENT_FLAGS | {-1})
        flags = sorted(_CLIENT_FLAGS) if flag == -1 else [flag]
        for f in flags:
            old = ctx.store.get_device(uid, f)
            if old is not None:
                await ctx.meta.set_device(uid, f, DeviceRecord("", old.device_level))
            for s in ctx.registry.of_flag(uid, f):
                s.kick(ReasonCode.CONNECT_KICK, "device quit")
        return Response(200, _OK)

    @r.route("POST", "/user/onlinestatus")
    async def online_status(req: Request) -> Response:
        uids = req.json()
        if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
            raise bad_request("body must be a JSON list of uids")
        out: list[dict[str, Any]] = []
        for uid in uids:
            flags = sorted({s.device_flag for s in ctx.registry.of(uid)})
            out.extend({"uid": uid, "device_flag": f, "online": 1} for f in flags)
        return Response(200, out)

    async def _save_channel(body: dict[str, Any], with_subscribers: bool) -> None:
        channel_id = get_str(body, "channel_id", required=True)
        channel_type = get_int(
            body, "channel_type", required=True, choices={int(t) for t in ChannelType}
        )
        _check_id(channel_id, "channel_id")
        subscribers = get_str_list(body, "subscribers") if with_subscribers else []
        if subscribers and channel_type == ChannelType.PERSON:
            raise bad_request("a person channel takes no subscribers")
        for uid in subscribers:
            _check_id(uid, "subscriber uid")
        info = ctx.store.get_channel(channel_type, channel_id) or ChannelInfo(
            channel_id, channel_type
        )
        for name in ("ban", "disband", "send_ban", "allow_stranger", "large"):
            value = get_flag(body, name)
            if value is not None:
                setattr(info, name, value)
        remove: list[str] = []
        if with_subscribers and get_flag(body, "reset"):
            remove = ctx.store.subscribers(channel_type, channel_id)
        await ctx.meta.put_channel(info, add=subscribers, remove=remove)

    @r.route("POST", "/channel")
    async def channel(req: Request) -> Response:
        await _save_channel(req.json_object(), with_subscribers=True)
        return Response(200, _OK)

    @r.route("POST", "/channel/info")
    async def channel_info(req: Request) -> Response:
        await _save_channel(req.json_object(), with_subscribers=False)
        return Response(200, _OK)

    async def _subscribers(req: Request, add: bool) -> Response:
        body = req.json_object()
        channel_id = _check_id(get_str(body, "channel_id", required=True), "channel_id")
        channel_type = get_int(body, "channel_type", required=True, choices={2, 3, 4, 5, 10, 12})
        uids = get_str_list(body, "subscribers", required=True)
        for uid in uids:
            _check_id(uid, "subscriber uid")
        info = ctx.store.get_channel(channel_type, channel_id)
        if info is None:
            if not add:
                raise ApiError(404, f"channel {channel_id} does not exist")
            info = ChannelInfo(channel_id, channel_type)
        remove = uids if not add else []
        if add and get_flag(body, "reset"):
            remove = ctx.store.subscribers(channel_type, channel_id)
        await ctx.meta.put_channel(info, add=uids if add else [], remove=remove)
        return Response(200, _OK)

    @r.route("POST", "/channel/subscriber_add")
    async def subscriber_add(req: Request) -> Response:
        return await _subscribers(req, add=True)

    @r.route("POST", "/channel/subscriber_remove")
    async def subscriber_remove(req: Request) -> Response:
        return await _subscribers(req, add=False)

    @r.route("POST", "/message/send")
    async def message_send(req: Request) -> Response:
        body = req.json_object()
        from_uid = get_str(body, "from_uid") or get_str(body, "sender_uid") or SYSTEM_UID
        if from_uid != SYSTEM_UID:
            _check_id(from_uid, "from_uid")
        channel_id = get_str(body, "channel_id", required=True)
        channel_type = get_int(body, "channel_type", required=True)
        if channel_type not in _SUPPORTED_SEND_TYPES:
            raise bad_request(f"channel_type {channel_type} is not supported yet (1 or 2)")
        if channel_type == ChannelType.PERSON and from_uid == SYSTEM_UID:
            raise bad_request("from_uid is required for a person channel")
        try:
            if channel_type != ChannelType.PERSON or "@" not in channel_id:
                _check_id(channel_id, "channel_id")
            canonical = canonical_channel_id(from_uid, channel_id, channel_type)
        except ValueError as e:
            raise bad_request(f"channel_id: {e}") from None
        raw_payload = get_str(body, "payload", required=True)
        try:
            payload = base64.b64decode(raw_payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("payload must be base64") from None
        header = body.get("header") or {}
        if not isinstance(header, dict):
            raise bad_request("header must be an object")
        flags = 0
        for name, bit in (
            ("no_persist", HeaderFlag.NO_PERSIST),
            ("red_dot", HeaderFlag.RED_DOT),
            ("sync_once", HeaderFlag.SYNC_ONCE),
        ):
            if get_flag(header, name):
                flags |= bit
        client_msg_no = get_str(body, "client_msg_no") or uuid.uuid4().hex
        expire = get_int(body, "expire", minimum=0, maximum=0xFFFFFFFF)
        request = SendRequest(
            from_uid=from_uid,
            channel_id=canonical,
            channel_type=channel_type,
            client_msg_no=client_msg_no,
            payload=payload,
            flags=flags,
            expire=expire,
            trusted=True,
        )
        problem = request_problem(request)
        if problem is not None:
            raise bad_request(problem)
        outcome = await ctx.pipeline.submit(request)
        if outcome.reason == ReasonCode.CHANNEL_NOT_EXIST:
            raise ApiError(404, f"channel {channel_id} does not exist", reason=outcome.reason)
        if outcome.reason == ReasonCode.SYSTEM_ERROR:
            raise ApiError(500, "message could not be stored", reason=outcome.reason)
        if not outcome.ok:
            raise ApiError(403, f"send refused: {outcome.reason.name}", reason=int(outcome.reason))
        return Response(
            200,
            {
                "message_id": outcome.message_id,
                "message_idstr": str(outcome.message_id),
                "message_seq": outcome.message_seq,
                "client_msg_no": client_msg_no,
            },
        )

    return r
