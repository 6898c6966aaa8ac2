"""Channel lists, channel info and subscribers, and channel deletion.

Lists of a person channel belong to its owner: ``{"channel_id": "bob", "channel_type": 1}``
addresses bob's own deny/allow lists, kept in bob's slot group.
"""

from __future__ import annotations

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType

from .common import CHANNEL_TYPES, OK, ApiContext, RouteAdder, check_id, meta, uid_list
from .fields import get_int, get_str
from .server import ApiError, Request, Response, bad_request

_KINDS = {"blacklist": pb.ListUpdate.DENY, "whitelist": pb.ListUpdate.ALLOW}
_QUERY_KINDS = {"blacklist": "deny", "whitelist": "allow"}


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


def register(route: RouteAdder, ctx: ApiContext) -> None:
    """Add this module's routes."""

    def list_routes(name: str) -> None:
        kind = _KINDS[name]

        async def change(req: Request, mode: str) -> Response:
            body = req.json_object()
            channel_id, channel_type = _channel_of_body(body)
            update = pb.ListUpdate(channel_id=channel_id, channel_type=channel_type, kind=kind)
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

        for mode in ("add", "set", "remove", "remove_all"):

            async def handler(req: Request, mode: str = mode) -> Response:
                return await change(req, mode)

            route("POST", f"/channel/{name}_{mode}")(handler)

        @route("GET", f"/channel/{name}")
        async def get_list(req: Request) -> Response:
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

    list_routes("blacklist")
    list_routes("whitelist")

    @route("GET", "/channel/info")
    async def get_info(req: Request) -> Response:
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

    @route("GET", "/channel/subscribers")
    async def get_subscribers(req: Request) -> Response:
        channel_id, channel_type = _channel_of_query(req)
        uids = await ctx.router.read(
            channel_id,
            {"q": "subscribers", "channel_id": channel_id, "channel_type": channel_type},
        )
        return Response(200, uids)

    @route("POST", "/channel/subscriber_remove_all")
    async def subscriber_remove_all(req: Request) -> Response:
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

    @route("POST", "/channel/delete")
    async def channel_delete(req: Request) -> Response:
        channel_id, channel_type = _channel_of_body(req.json_object())
        op = pb.ChannelDelete(channel_id=channel_id, channel_type=channel_type)
        await meta(ctx, channel_id, pb.MetaOp(channel_delete=op))
        await user_facts_changed(ctx, channel_id, channel_type)
        return Response(200, OK)
