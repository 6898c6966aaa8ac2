"""The HTTP API, with WuKongIM v2 request bodies and envelopes; every route works on every
node (the router takes each request to the leader of the slot group that owns its key).

Errors are HTTP 400 ``{"msg": ..., "status": 400}`` naming the field; permission refusals of
``/message/send`` are 403 with the reason code; a cluster that cannot serve the request in time
is 503 with the reason code (17, 18 or 10); see ``docs/api.md``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode, Setting

from ..pipeline_rules import SYSTEM_UID, request_problem
from ..send_checks import precheck
from . import (
    routes_backup,
    routes_channels,
    routes_cluster,
    routes_conversations,
    routes_history,
    routes_import,
    routes_messages,
    routes_monitoring,
    routes_sends,
    routes_streams,
    routes_users,
    routes_webhooks,
)
from .auth import Credentials
from .common import (
    CHANNEL_TYPES,
    ApiContext,
    check_id,
    guard,
    message_resp,
    person_or_channel,
)
from .fields import get_flag, get_int, get_str
from .routes_sends import raise_for_reason
from .server import ApiError, Handler, Request, Response, bad_request
from .server import Router as HttpRouter

_SUPPORTED_SEND_TYPES = CHANNEL_TYPES


def build_router(ctx: ApiContext) -> HttpRouter:
    r = HttpRouter(Credentials(ctx.config.auth, lambda: len(ctx.router.placement.nodes) > 1))

    def route(method: str, path: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            r.add(method, path, guard(fn))
            return fn

        return deco

    @route("POST", "/message/send")
    async def message_send(req: Request) -> Response:
        body = req.json_object()
        if body.get("subscribers") is not None:
            return await routes_sends.subscriber_send(ctx, body)
        from_uid = routes_sends.sender(body)
        channel_type = get_int(body, "channel_type", required=True)
        if channel_type not in _SUPPORTED_SEND_TYPES:
            raise bad_request(f"channel_type must be one of 1-12, got {channel_type}")
        if channel_type == ChannelType.PERSON and from_uid == SYSTEM_UID:
            raise bad_request("from_uid is required for a person channel")
        _, canonical, _ = person_or_channel({**body, "from_uid": from_uid}, "from_uid")
        payload = routes_sends.parse_payload(ctx, body)
        # An omitted red_dot counts as 1 here: a message raises the unread count unless the
        # backend says otherwise (docs/messaging.md).
        flags = routes_sends.parse_flags(ctx, body, payload, red_dot_default=True)
        client_msg_no = get_str(body, "client_msg_no") or uuid.uuid4().hex
        expire = get_int(body, "expire", minimum=0, maximum=0xFFFFFFFF)
        problem = request_problem(client_msg_no, "", "", canonical, from_uid, expire)
        if problem is not None:
            raise bad_request(problem)
        setting = get_int(body, "setting", minimum=0, maximum=255)  # 0x80: receipts
        if get_flag(body, "is_stream"):
            # The anchor of a stream: events follow with /message/event (routes_streams).
            setting |= Setting.STREAM
        item = pb.SendItem(
            from_uid=from_uid,
            channel_id=canonical,
            channel_type=channel_type,
            client_msg_no=client_msg_no,
            payload=payload,
            flags=flags,
            expire=expire,
            setting=setting,
            trusted=True,
        )
        refused = await precheck(ctx.facts, item, ctx.rules)
        if refused != ReasonCode.SUCCESS:
            outcome = pb.SendOutcome(reason=refused)  # user-level rule: nothing proposed
        else:
            outcome = await ctx.router.send(item)
        reason = ReasonCode(outcome.reason)
        if ctx.metrics is not None:
            ctx.metrics.sendack("http", reason)
        if reason == ReasonCode.CHANNEL_NOT_EXIST:
            raise ApiError(404, f"channel {body['channel_id']} does not exist", reason=reason)
        # A retryable answer carries the client_msg_no, so that a retry is recognised (dedupe)
        # even when the server made it up.
        raise_for_reason(reason, client_msg_no)
        return Response(
            200,
            {
                "message_id": outcome.message_id,
                "message_idstr": str(outcome.message_id),
                "message_seq": outcome.message_seq,
                "client_msg_no": client_msg_no,
            },
        )

    @route("POST", "/channel/messagesync")
    async def message_sync(req: Request) -> Response:
        body = req.json_object()
        login_uid = check_id(get_str(body, "login_uid", required=True), "login_uid")
        _, canonical, channel_type = person_or_channel(body, "login_uid")
        start = get_int(body, "start_message_seq", minimum=0)
        end = get_int(body, "end_message_seq", minimum=0)
        limit = get_int(body, "limit", default=100, minimum=1, maximum=10_000)
        pull_mode = get_int(body, "pull_mode", default=0, choices={0, 1})
        page = await ctx.router.read(
            canonical,
            {
                "q": "messages",
                "channel_id": canonical,
                "channel_type": channel_type,
                "start_message_seq": start,
                "end_message_seq": end,
                "limit": limit,
                "pull_mode": pull_mode,
                "login_uid": login_uid,
            },
        )
        messages = [message_resp(m, login_uid) for m in page["messages"]]
        return Response(
            200,
            {
                "start_message_seq": start,
                "end_message_seq": end,
                "more": page["more"],
                "messages": messages,
            },
        )

    @route("GET", "/channel/max_message_seq")
    async def max_message_seq(req: Request) -> Response:
        channel_id = req.query.get("channel_id", "")
        try:
            channel_type = int(req.query.get("channel_type", ""))
        except ValueError:
            raise bad_request("channel_type must be an integer") from None
        if channel_type == ChannelType.PERSON and "@" not in channel_id:
            raise bad_request("channel_id of a person channel must be the canonical a@b id")
        if channel_type != ChannelType.PERSON:
            check_id(channel_id, "channel_id")
        head = await ctx.router.read(
            channel_id, {"q": "head", "channel_id": channel_id, "channel_type": channel_type}
        )
        return Response(200, {"message_seq": head})

    for module in (
        routes_backup,
        routes_channels,
        routes_cluster,
        routes_conversations,
        routes_messages,
        routes_monitoring,
        routes_history,
        routes_import,
        routes_sends,
        routes_streams,
        routes_users,
        routes_webhooks,
    ):
        module.register(route, ctx)
    return r
