"""Message reads: by id (``/messages``, ``/message``), by ``client_msg_no``, a channel's
history (``/channel/messagesync``), its last message and its last ``message_seq``. A message
id names the slot group that stored it, so lookups by id go to that group's leader directly
(one read per group involved)."""

from __future__ import annotations

from typing import Any

import trio

from proto.wkproto import ChannelType

from ..channels import canonical_channel_id
from ..groups.msgindex import MAX_IDS, group_of_message_id
from ..router import ClusterUnavailable
from .common import (
    CHANNEL_TYPES,
    ApiContext,
    RouteTable,
    check_id,
    message_resp,
    person_or_channel,
)
from .fields import get_int, get_str, message_id_of
from .server import Request, Response, bad_request

NOT_FOUND = Response(404, {"status": 404})


def _query_channel(req: Request, uid_field: str) -> tuple[str, str, int]:
    """(uid, canonical channel id, type) from a query string; person channels by the peer's uid
    from ``uid_field``'s view (an ``a@b`` id is accepted as is)."""
    channel_id = req.query.get("channel_id", "")
    raw_type = req.query.get("channel_type", "")
    if not raw_type.isdigit() or int(raw_type) not in CHANNEL_TYPES:
        raise bad_request(f"channel_type must be one of {sorted(CHANNEL_TYPES)}")
    channel_type = int(raw_type)
    uid = req.query.get(uid_field, "")
    if uid:
        check_id(uid, uid_field)
    if channel_type != ChannelType.PERSON or "@" not in channel_id:
        check_id(channel_id, "channel_id")
    if channel_type == ChannelType.PERSON and not uid:
        raise bad_request(f"{uid_field} is required for a person channel")
    try:
        canonical = canonical_channel_id(uid, channel_id, channel_type)
    except ValueError as e:
        raise bad_request(f"channel_id: {e}") from None
    return uid, canonical, channel_type


async def lookup_ids(ctx: ApiContext, ids: list[int], login_uid: str) -> list[dict[str, Any]]:
    """The stored messages among ``ids`` as MessageResp, in the order asked; unknown ids (and
    ids of groups that do not exist) are left out."""
    by_group: dict[int, list[int]] = {}
    for mid in dict.fromkeys(ids):
        group = group_of_message_id(mid)
        if group in ctx.router.placement.groups:
            by_group.setdefault(group, []).append(mid)
    found: dict[int, dict[str, Any]] = {}
    failures: list[ClusterUnavailable] = []

    async def one(group: int, wanted: list[int]) -> None:
        query = {"q": "messages_by_id", "ids": wanted, "login_uid": login_uid}
        try:
            for m in await ctx.router.read_group(group, query):
                found[m["message_id"]] = m
        except ClusterUnavailable as e:
            failures.append(e)  # raised below, unwrapped from the nursery's group

    async with trio.open_nursery() as nursery:
        for group, wanted in by_group.items():
            nursery.start_soon(one, group, wanted)
    if failures:
        raise failures[0]  # the API's 503 (a group without a leader), not a 500
    return [message_resp(found[mid], login_uid) for mid in dict.fromkeys(ids) if mid in found]


async def messages(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    raw = body.get("message_ids")
    if not isinstance(raw, list):
        raise bad_request("message_ids is required (a list of message ids)")
    if len(raw) > MAX_IDS:
        raise bad_request(f"message_ids: at most {MAX_IDS} ids")
    ids = [message_id_of(v, "message_ids") for v in raw]
    login_uid = get_str(body, "login_uid")
    if login_uid:
        check_id(login_uid, "login_uid")
    return Response(200, await lookup_ids(ctx, ids, login_uid))


async def message(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    if body.get("message_id") is None:
        raise bad_request("message_id is required")
    mid = message_id_of(body["message_id"], "message_id")
    login_uid = get_str(body, "login_uid")
    if login_uid:
        check_id(login_uid, "login_uid")
    found = await lookup_ids(ctx, [mid], login_uid)
    return Response(200, found[0]) if found else NOT_FOUND


async def by_client_msg_no(ctx: ApiContext, req: Request) -> Response:
    from_uid, canonical, channel_type = _query_channel(req, "from_uid")
    client_msg_no = req.query.get("client_msg_no", "")
    if not client_msg_no:
        raise bad_request("client_msg_no is required")
    if not from_uid:
        raise bad_request("from_uid is required")
    found = await ctx.router.read(
        canonical,
        {
            "q": "message_by_client_msg_no",
            "channel_id": canonical,
            "channel_type": channel_type,
            "from_uid": from_uid,
            "client_msg_no": client_msg_no,
            "login_uid": from_uid,
        },
    )
    return NOT_FOUND if found is None else Response(200, message_resp(found, from_uid))


async def last_message(ctx: ApiContext, req: Request) -> Response:
    login_uid, canonical, channel_type = _query_channel(req, "login_uid")
    found = await ctx.router.read(
        canonical,
        {
            "q": "last_message",
            "channel_id": canonical,
            "channel_type": channel_type,
            "login_uid": login_uid,
        },
    )
    return NOT_FOUND if found is None else Response(200, message_resp(found, login_uid))


async def message_sync(ctx: ApiContext, req: Request) -> Response:
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


async def max_message_seq(ctx: ApiContext, req: Request) -> Response:
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


ROUTES: RouteTable = (
    ("POST", "/messages", messages),
    ("POST", "/message", message),
    ("GET", "/message/byclientmsgno", by_client_msg_no),
    ("GET", "/channel/last_message", last_message),
    ("POST", "/channel/messagesync", message_sync),
    ("GET", "/channel/max_message_seq", max_message_seq),
)
