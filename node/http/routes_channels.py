"""Channels: creation and flags, subscribers, deny/allow lists, deletion.

Lists of a person channel belong to its owner: ``{"channel_id": "bob", "channel_type": 1}``
addresses bob's own deny/allow lists, kept in bob's slot group.
"""

from __future__ import annotations

from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType

from .common import (
    CHANNEL_TYPES,
    OK,
    ApiContext,
    ContextHandler,
    RouteTable,
    check_id,
    meta,
    uid_list,
)
from .fields import get_flag, get_int, get_str, get_str_list
from .server import ApiError, Request, Response, bad_request

_KINDS = {"blacklist": pb.ListUpdate.DENY, "whitelist": pb.ListUpdate.ALLOW}
_QUERY_KINDS = {"blacklist": "deny", "whitelist": "allow"}
_LIST_MODES = ("add", "set", "remove", "remove_all")


def _channel_of_body(body: dict[str, object]) -> tuple[str, int]:
    channel_id = check_id(get_str(body, "channel_id", required=True), "channel_id")
    channel_type = get_int(body, "channel_type", required=True, choices=CHANNEL_TYPES)
    return channel_id, channel_type


def _channel_of_query(req: Request) -> tuple[str, int]:
    try:
        channel_type = int(req.query.get("channel_type", ""))
    except ValueError:
        raise bad_request("channel_type must be an integer") from None
    if channel_type not in CHANNEL_TYPES:
        raise bad_request(f"channel_type must be one of {sorted(CHANNEL_TYPES)}")
    return check_id(req.query.get("channel_id", ""), "channel_id"), channel_type


async def user_facts_changed(ctx: ApiContext, channel_id: str, channel_type: int) -> None:
    """A change of a person channel changes its owner's user facts: tell every node's cache
    before the request is answered (see ``node/userfacts.py``)."""
    if channel_type == ChannelType.PERSON:
        await ctx.facts.changed([channel_id])


def _channel_update(body: dict[str, Any], *, subscribers: str | None) -> pb.ChannelUpdate:
    """The channel and flags of a request body; ``subscribers``: "required", "optional" or
    None (not read)."""
    channel_id, channel_type = _channel_of_body(body)
    update = pb.ChannelUpdate(channel_id=channel_id, channel_type=channel_type)
    for name in ("ban", "disband", "send_ban", "allow_stranger", "large"):
        value = get_flag(body, name)
        if value is not None:
            setattr(update, name, value)
    if subscribers is not None:
        uids = get_str_list(body, "subscribers", required=subscribers == "required")
        if uids and channel_type == ChannelType.PERSON:
            raise bad_request("a person channel takes no subscribers")
        for uid in uids:
            check_id(uid, "subscriber uid")
        update.add_subscribers.extend(uids)
    return update


async def channel(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    update = _channel_update(body, subscribers="optional")
    update.reset_subscribers = bool(get_flag(body, "reset"))
    await meta(ctx, update.channel_id, pb.MetaOp(channel=update))
    await user_facts_changed(ctx, update.channel_id, update.channel_type)
    return Response(200, OK)


async def set_info(ctx: ApiContext, req: Request) -> Response:
    update = _channel_update(req.json_object(), subscribers=None)
    await meta(ctx, update.channel_id, pb.MetaOp(channel=update))
    await user_facts_changed(ctx, update.channel_id, update.channel_type)
    return Response(200, OK)


async def get_info(ctx: ApiContext, req: Request) -> Response:
    """The stored flags of a channel; 404 when it was never created (or was deleted)."""
    channel_id, channel_type = _channel_of_query(req)
    info = await ctx.router.read(
        channel_id, {"q": "channel", "channel_id": channel_id, "channel_type": channel_type}
    )
    if info is None:
        raise ApiError(404, f"channel {channel_id} does not exist")
    flags = {k: int(v) if isinstance(v, bool) else v for k, v in info.items()}
    flags.pop("extra", None)
    return Response(200, flags)


async def subscriber_add(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    update = _channel_update(body, subscribers="required")
    update.reset_subscribers = bool(get_flag(body, "reset"))
    await meta(ctx, update.channel_id, pb.MetaOp(channel=update))
    return Response(200, OK)


async def subscriber_remove(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    update = _channel_update(body, subscribers="required")
    update.remove_subscribers.extend(update.add_subscribers)
    del update.add_subscribers[:]
    update.must_exist = True
    await meta(ctx, update.channel_id, pb.MetaOp(channel=update))
    return Response(200, OK)


async def subscriber_remove_all(ctx: ApiContext, req: Request) -> Response:
    channel_id, channel_type = _channel_of_body(req.json_object())
    if channel_type == ChannelType.PERSON:
        raise bad_request("a person channel has no subscribers")
    update = pb.ChannelUpdate(
        channel_id=channel_id,
        channel_type=channel_type,
        reset_subscribers=True,
        must_exist=True,
    )
    await meta(ctx, channel_id, pb.MetaOp(channel=update))
    return Response(200, OK)


async def get_subscribers(ctx: ApiContext, req: Request) -> Response:
    channel_id, channel_type = _channel_of_query(req)
    uids = await ctx.router.read(
        channel_id,
        {"q": "subscribers", "channel_id": channel_id, "channel_type": channel_type},
    )
    return Response(200, uids)


async def channel_delete(ctx: ApiContext, req: Request) -> Response:
    channel_id, channel_type = _channel_of_body(req.json_object())
    op = pb.ChannelDelete(channel_id=channel_id, channel_type=channel_type)
    await meta(ctx, channel_id, pb.MetaOp(channel_delete=op))
    await user_facts_changed(ctx, channel_id, channel_type)
    return Response(200, OK)


async def _change_list(ctx: ApiContext, req: Request, name: str, mode: str) -> Response:
    body = req.json_object()
    channel_id, channel_type = _channel_of_body(body)
    update = pb.ListUpdate(channel_id=channel_id, channel_type=channel_type, kind=_KINDS[name])
    if mode == "add":
        update.add.extend(uid_list(body, required=True))
    elif mode == "set":
        update.reset = True
        update.add.extend(uid_list(body, required=False))
    elif mode == "remove":
        update.remove.extend(uid_list(body, required=True))
    else:
        update.reset = True
    await meta(ctx, channel_id, pb.MetaOp(lists=update))
    await user_facts_changed(ctx, channel_id, channel_type)
    return Response(200, OK)


def _list_change(name: str, mode: str) -> ContextHandler:
    """The handler of ``POST /channel/{name}_{mode}``."""

    async def handler(ctx: ApiContext, req: Request) -> Response:
        return await _change_list(ctx, req, name, mode)

    return handler


def _list_reader(name: str) -> ContextHandler:
    """The handler of ``GET /channel/{name}``."""

    async def get_list(ctx: ApiContext, req: Request) -> Response:
        channel_id, channel_type = _channel_of_query(req)
        members = await ctx.router.read(
            channel_id,
            {
                "q": "list",
                "kind": _QUERY_KINDS[name],
                "channel_id": channel_id,
                "channel_type": channel_type,
            },
        )
        return Response(200, members)

    return get_list


ROUTES: RouteTable = (
    ("POST", "/channel", channel),
    ("POST", "/channel/info", set_info),
    ("GET", "/channel/info", get_info),
    ("POST", "/channel/subscriber_add", subscriber_add),
    ("POST", "/channel/subscriber_remove", subscriber_remove),
    ("POST", "/channel/subscriber_remove_all", subscriber_remove_all),
    ("GET", "/channel/subscribers", get_subscribers),
    ("POST", "/channel/delete", channel_delete),
    *(
        ("POST", f"/channel/{name}_{mode}", _list_change(name, mode))
        for name in _KINDS
        for mode in _LIST_MODES
    ),
    *(("GET", f"/channel/{name}", _list_reader(name)) for name in _KINDS),
)
