"""The HTTP API's route table: one function per route that builds a :class:`Call` (method,
path, body or query, how to parse the answer, whether it may be resent).

No I/O happens here. ``client.http`` turns each builder into a method of both the trio and the
blocking client, so a route is described once; see ``docs/api.md`` for what each route does.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypedDict, TypeVar, Unpack

from .models import (
    BatchSendResult,
    ChannelInfo,
    ClusterStatus,
    Conversation,
    EditResult,
    Message,
    MessagePage,
    OnlineStatus,
    RevokeResult,
    Route,
    SendResult,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    """Turns the decoded JSON answer (of a status in ``statuses``) into the result."""
    body: Any = None
    query: Mapping[str, str | int] | None = None
    idempotent: bool = True
    """Safe to send again after a request that may have reached the server (a read timeout or
    a 503 with reason 18). Sends are, thanks to their ``client_msg_no``; edits are not."""
    statuses: frozenset[int] = frozenset({200})
    """Statuses answered through ``parse`` instead of raising ``ApiError`` (404 for lookups
    that return None)."""


_FOUND_OR_404 = frozenset({200, 404})


def _nothing(_: Any) -> None:
    return None


def _message_or_none(d: Any) -> Message | None:
    # A lookup's 404 body is {"status": 404}: no message members.
    return Message.from_json(d) if isinstance(d, dict) and "message_id" in d else None


def _b64(payload: bytes | str) -> str:
    raw = payload.encode() if isinstance(payload, str) else payload
    return base64.b64encode(raw).decode()


def _channel(channel_id: str, channel_type: int) -> dict[str, Any]:
    return {"channel_id": channel_id, "channel_type": int(channel_type)}


def _header(red_dot: bool, no_persist: bool, sync_once: bool) -> dict[str, int]:
    return {"red_dot": int(red_dot), "no_persist": int(no_persist), "sync_once": int(sync_once)}


def _post(path: str, body: Any) -> Call[None]:
    return Call("POST", path, _nothing, body=body)


# --- generic --------------------------------------------------------------------------------


def call(
    method: str, path: str, body: Any = None, query: Mapping[str, str | int] | None = None
) -> Call[Any]:
    """Any route, answering the decoded JSON: the escape hatch for routes without a method.
    Not resent after a request that may have reached the server."""
    return Call(method.upper(), path, lambda d: d, body=body, query=query, idempotent=False)


# --- node and cluster -----------------------------------------------------------------------


def health() -> Call[bool]:
    """True once every slot group this node replicates has a leader (a 503 answers False)."""
    return Call("GET", "/health", lambda d: d.get("status") == "ok", statuses=frozenset({200, 503}))


def route(uid: str | None = None, intranet: bool = False) -> Call[Route]:
    """Where WKProto clients connect (TCP and WebSocket addresses): with ``uid``, the node
    that user is spread to; without, the node asked. ``intranet``: the bound addresses."""
    query: dict[str, str | int] = {"intranet": int(intranet)}
    if uid:
        query["uid"] = uid
    return Call("GET", "/route", Route.from_json, query=query)


def route_batch(uids: Iterable[str], intranet: bool = False) -> Call[list[Route]]:
    """Where each of ``uids`` connects: one :class:`Route` per node, with its ``uids``."""
    return Call(
        "POST",
        "/route/batch",
        lambda d: [Route.from_json(r) for r in d],
        body=list(uids),
        query={"intranet": int(intranet)},
    )


def cluster_status() -> Call[ClusterStatus]:
    return Call("GET", "/cluster/status", ClusterStatus.from_json)


def cluster_leave(node_id: int, force: bool = False) -> Call[None]:
    """Start moving a node's replicas away; it is removed once it holds none."""
    return _post("/cluster/leave", {"node_id": node_id, **({"force": 1} if force else {})})


def cluster_drain(node_id: int) -> Call[None]:
    """Drain a node (no new clients, leaderships and sessions moved away), then stop it."""
    return _post("/cluster/drain", {"node_id": node_id})


# --- users ----------------------------------------------------------------------------------


def user_token(
    uid: str, token: str, device_flag: int = 0, device_level: int = 0, expire: int = 0
) -> Call[None]:
    """Register the token ``uid`` must present in CONNECT from that platform (0 APP, 1 WEB,
    2 PC); ``device_level`` 1 (master) kicks the platform's live sessions. With ``expire``,
    the token logs in for that many seconds from now (then CONNACK reason 2, AuthFail)."""
    body = {"uid": uid, "token": token, "device_flag": device_flag, "device_level": device_level}
    if expire:
        body["expire"] = expire
    return _post("/user/token", body)


def device_quit(uid: str, device_flag: int = -1) -> Call[None]:
    """Blank the token and kick the sessions (``-1``: every platform)."""
    return _post("/user/device_quit", {"uid": uid, "device_flag": device_flag})


def online_status(uids: Iterable[str]) -> Call[list[OnlineStatus]]:
    """One entry per online uid and platform; offline uids are absent."""
    return Call(
        "POST", "/user/onlinestatus", lambda d: [OnlineStatus.from_json(x) for x in d], list(uids)
    )


def system_uids() -> Call[list[str]]:
    return Call("GET", "/user/systemuids", lambda d: [str(u) for u in d])


def system_uids_add(uids: Iterable[str]) -> Call[None]:
    return _post("/user/systemuids_add", {"uids": list(uids)})


def system_uids_remove(uids: Iterable[str]) -> Call[None]:
    return _post("/user/systemuids_remove", {"uids": list(uids)})


# --- channels -------------------------------------------------------------------------------


class ChannelFlags(TypedDict, total=False):
    """A channel's flags; a flag left out keeps its stored value on the server."""

    ban: bool
    disband: bool
    send_ban: bool
    allow_stranger: bool
    large: bool


def _flag_ints(flags: ChannelFlags) -> dict[str, int]:
    return {k: 1 if v else 0 for k, v in flags.items()}


def channel_create(
    channel_id: str,
    channel_type: int,
    subscribers: Iterable[str] = (),
    *,
    reset: bool = False,
    **flags: Unpack[ChannelFlags],
) -> Call[None]:
    """Create or update a channel and add subscribers (``reset``: replace them)."""
    body = {
        **_channel(channel_id, channel_type),
        "subscribers": list(subscribers),
        "reset": int(reset),
        **_flag_ints(flags),
    }
    return _post("/channel", body)


def channel_info_update(
    channel_id: str, channel_type: int, **flags: Unpack[ChannelFlags]
) -> Call[None]:
    """Change a channel's flags (``POST /channel/info``); a person channel's are the user's."""
    body = {**_channel(channel_id, channel_type), **_flag_ints(flags)}
    return _post("/channel/info", body)


def channel_info(channel_id: str, channel_type: int) -> Call[ChannelInfo | None]:
    """The stored flags; None for a channel that was never created or was deleted."""
    return Call(
        "GET",
        "/channel/info",
        lambda d: ChannelInfo.from_json(d) if "channel_type" in d else None,
        query=_channel(channel_id, channel_type),
        statuses=_FOUND_OR_404,
    )


def channel_delete(channel_id: str, channel_type: int) -> Call[None]:
    """Remove the channel's row, subscribers and lists; its messages stay readable."""
    return _post("/channel/delete", _channel(channel_id, channel_type))


def subscribers(channel_id: str, channel_type: int) -> Call[list[str]]:
    return Call(
        "GET",
        "/channel/subscribers",
        lambda d: [str(u) for u in d],
        query=_channel(channel_id, channel_type),
    )


def subscriber_add(
    channel_id: str, channel_type: int, uids: Iterable[str], *, reset: bool = False
) -> Call[None]:
    body = {**_channel(channel_id, channel_type), "subscribers": list(uids), "reset": int(reset)}
    return _post("/channel/subscriber_add", body)


def subscriber_remove(channel_id: str, channel_type: int, uids: Iterable[str]) -> Call[None]:
    body = {**_channel(channel_id, channel_type), "subscribers": list(uids)}
    return _post("/channel/subscriber_remove", body)


def subscriber_remove_all(channel_id: str, channel_type: int) -> Call[None]:
    return _post("/channel/subscriber_remove_all", _channel(channel_id, channel_type))


ListName = Literal["blacklist", "whitelist"]
ListAction = Literal["add", "set", "remove", "remove_all"]


def list_change(
    name: ListName, action: ListAction, channel_id: str, channel_type: int, uids: Iterable[str]
) -> Call[None]:
    """Change a channel's deny list (``blacklist``) or allow list (``whitelist``): ``add``,
    ``remove``, ``set`` (replace) or ``remove_all``. A person channel's lists are its owner's."""
    body = {**_channel(channel_id, channel_type), "uids": list(uids)}
    return _post(f"/channel/{name}_{action}", body)


def list_get(name: ListName, channel_id: str, channel_type: int) -> Call[list[str]]:
    """A channel's deny list (``blacklist``) or allow list (``whitelist``), in byte order."""
    return Call(
        "GET",
        f"/channel/{name}",
        lambda d: [str(u) for u in d],
        query=_channel(channel_id, channel_type),
    )


# --- sending --------------------------------------------------------------------------------


class SendOptions(TypedDict, total=False):
    """The options of a send, over HTTP (``send``) or gRPC (``client.grpc``)."""

    client_msg_no: str | None
    """The dedupe key; generated when absent, so that the client's own retries (after a
    timeout, a 503 or UNAVAILABLE) return the original ids instead of storing it twice."""
    red_dot: bool
    no_persist: bool
    sync_once: bool
    setting: int
    expire: int


@dataclass(frozen=True, slots=True)
class SendSettings:
    """``SendOptions`` with their defaults, and the ``client_msg_no`` to use."""

    client_msg_no: str
    red_dot: bool
    no_persist: bool
    sync_once: bool
    setting: int
    expire: int

    @classmethod
    def of(cls, options: SendOptions) -> SendSettings:
        return cls(
            client_msg_no=options.get("client_msg_no") or uuid.uuid4().hex,
            red_dot=options.get("red_dot", True),
            no_persist=options.get("no_persist", False),
            sync_once=options.get("sync_once", False),
            setting=options.get("setting", 0),
            expire=options.get("expire", 0),
        )


def send(
    from_uid: str,
    channel_id: str,
    channel_type: int,
    payload: bytes | str,
    *,
    topic: str = "",
    **options: Unpack[SendOptions],
) -> Call[SendResult]:
    """Send as ``from_uid`` ("" sends as the system). Answered once the message is durable.
    ``options``: ``SendOptions`` (``client_msg_no``, ``red_dot``, ``no_persist``, ...)."""
    o = SendSettings.of(options)
    body = {
        "from_uid": from_uid,
        **_channel(channel_id, channel_type),
        "payload": _b64(payload),
        "client_msg_no": o.client_msg_no,
        "header": _header(o.red_dot, o.no_persist, o.sync_once),
        "setting": o.setting,
        "expire": o.expire,
        **({"topic": topic} if topic else {}),
    }
    return Call("POST", "/message/send", SendResult.from_json, body=body)


def send_to(
    from_uid: str,
    uids: Iterable[str],
    payload: bytes | str,
    *,
    client_msg_no: str | None = None,
    no_persist: bool = False,
) -> Call[SendResult]:
    """A command message (sync_once) delivered to exactly these uids (``/message/send`` with
    ``subscribers``)."""
    body = {
        "from_uid": from_uid,
        "subscribers": list(uids),
        "payload": _b64(payload),
        "client_msg_no": client_msg_no or uuid.uuid4().hex,
        "header": _header(False, no_persist, True),
    }
    return Call("POST", "/message/send", SendResult.from_json, body=body)


def send_batch(
    from_uid: str, uids: Iterable[str], payload: bytes | str, *, red_dot: bool = True
) -> Call[BatchSendResult]:
    """The payload as a person message from ``from_uid`` to each uid; the result lists the
    failed recipients with their reason codes. Not resent (each recipient's send is new)."""
    body = {
        "from_uid": from_uid,
        "subscribers": list(uids),
        "payload": _b64(payload),
        "header": _header(red_dot, False, False),
    }
    return Call(
        "POST", "/message/sendbatch", BatchSendResult.from_json, body=body, idempotent=False
    )


# --- reading messages -----------------------------------------------------------------------


def messagesync(
    login_uid: str,
    channel_id: str,
    channel_type: int,
    start_message_seq: int = 0,
    end_message_seq: int = 0,
    *,
    limit: int = 100,
    pull_mode: Literal[0, 1] = 1,
) -> Call[MessagePage]:
    """A page of a channel by seq, ascending. ``pull_mode`` 1 (the default here): from
    ``start_message_seq`` up to ``end_message_seq`` excluded (0 = the head); 0: down from
    ``start_message_seq`` (0 = the head). For a person channel ``channel_id`` is the peer's
    uid. Unlike the server's default (0), this defaults to pulling up: reading forward."""
    body = {
        "login_uid": login_uid,
        **_channel(channel_id, channel_type),
        "start_message_seq": start_message_seq,
        "end_message_seq": end_message_seq,
        "limit": limit,
        "pull_mode": pull_mode,
    }
    return Call("POST", "/channel/messagesync", MessagePage.from_json, body=body)


def messages(message_ids: Iterable[int], login_uid: str = "") -> Call[list[Message]]:
    """Messages by id, in the order asked; unknown ids are left out."""
    body = {"message_ids": list(message_ids), **({"login_uid": login_uid} if login_uid else {})}
    return Call("POST", "/messages", lambda d: [Message.from_json(m) for m in d], body=body)


def message(message_id: int, login_uid: str = "") -> Call[Message | None]:
    """One message by id, None when none is stored."""
    body = {"message_id": message_id, **({"login_uid": login_uid} if login_uid else {})}
    return Call("POST", "/message", _message_or_none, body=body, statuses=_FOUND_OR_404)


def message_by_client_msg_no(
    channel_id: str, channel_type: int, from_uid: str, client_msg_no: str
) -> Call[Message | None]:
    """What ``from_uid`` sent with that ``client_msg_no`` (as ``from_uid`` sees it), or None."""
    query = {
        **_channel(channel_id, channel_type),
        "from_uid": from_uid,
        "client_msg_no": client_msg_no,
    }
    return Call(
        "GET", "/message/byclientmsgno", _message_or_none, query=query, statuses=_FOUND_OR_404
    )


def max_message_seq(channel_id: str, channel_type: int) -> Call[int]:
    """The channel's head seq (person channels by their canonical ``a@b`` id)."""
    return Call(
        "GET",
        "/channel/max_message_seq",
        lambda d: int(d["message_seq"]),
        query=_channel(channel_id, channel_type),
    )


def last_message(channel_id: str, channel_type: int, login_uid: str = "") -> Call[Message | None]:
    """The newest stored message, None for an empty channel (``login_uid`` is needed for a
    person channel, whose ``channel_id`` is then the peer's uid)."""
    query = {
        **_channel(channel_id, channel_type),
        **({"login_uid": login_uid} if login_uid else {}),
    }
    return Call(
        "GET", "/channel/last_message", _message_or_none, query=query, statuses=_FOUND_OR_404
    )


def message_sync(
    uid: str, device_flag: int = 0, message_seq: int = 0, limit: int = 200
) -> Call[list[Message]]:
    """Command (sync_once) messages pending for this device; ``message_seq`` of each is its
    sync position, to pass to ``message_syncack``."""
    body = {"uid": uid, "device_flag": device_flag, "limit": limit}
    if message_seq:
        body["message_seq"] = message_seq
    return Call("POST", "/message/sync", lambda d: [Message.from_json(m) for m in d], body=body)


def message_syncack(uid: str, last_message_seq: int, device_flag: int = 0) -> Call[None]:
    body = {"uid": uid, "device_flag": device_flag, "last_message_seq": last_message_seq}
    return _post("/message/syncack", body)


# --- message operations ---------------------------------------------------------------------


def _target(message_id: int | None, message_seq: int | None) -> dict[str, int]:
    if message_id is None and message_seq is None:
        raise ValueError("message_id or message_seq is required")
    return {
        **({"message_id": message_id} if message_id is not None else {}),
        **({"message_seq": message_seq} if message_seq is not None else {}),
    }


def revoke(
    from_uid: str,
    channel_id: str,
    channel_type: int,
    *,
    message_id: int | None = None,
    message_seq: int | None = None,
    admin: bool = False,
) -> Call[RevokeResult]:
    """Revoke a message (the sender within the revoke window, or anyone with ``admin``).
    Revoking again answers the same."""
    body = {
        "from_uid": from_uid,
        **_channel(channel_id, channel_type),
        **_target(message_id, message_seq),
        "admin": int(admin),
    }
    return Call("POST", "/message/revoke", RevokeResult.from_json, body=body)


def edit(
    from_uid: str,
    channel_id: str,
    channel_type: int,
    payload: bytes | str,
    *,
    message_id: int | None = None,
    message_seq: int | None = None,
    admin: bool = False,
) -> Call[EditResult]:
    """Replace a message's payload; each edit gets the next version (so it is not resent)."""
    body = {
        "from_uid": from_uid,
        **_channel(channel_id, channel_type),
        **_target(message_id, message_seq),
        "payload": _b64(payload),
        "admin": int(admin),
    }
    return Call("POST", "/message/edit", EditResult.from_json, body=body, idempotent=False)


def delete_messages(
    uid: str, channel_id: str, channel_type: int, message_seqs: Iterable[int]
) -> Call[None]:
    """Hide these messages from ``uid`` only (``POST /message/delete``)."""
    body = {"uid": uid, **_channel(channel_id, channel_type), "message_seqs": list(message_seqs)}
    return _post("/message/delete", body)


def readed(uid: str, channel_id: str, channel_type: int, message_seqs: Iterable[int]) -> Call[None]:
    """Record ``uid`` as a reader of these messages (those sent with the receipt setting)."""
    body = {"uid": uid, **_channel(channel_id, channel_type), "message_seqs": list(message_seqs)}
    return _post("/message/readed", body)


# --- conversations --------------------------------------------------------------------------


def conversation_sync(
    uid: str,
    *,
    version: int = 0,
    last_msg_seqs: Mapping[tuple[str, int], int] | None = None,
    msg_count: int = 20,
    only_unread: bool = False,
    exclude_channel_types: Iterable[int] = (),
    page: int = 0,
    page_size: int = 100,
) -> Call[list[Conversation]]:
    """The user's conversations, newest first. ``last_msg_seqs``: (channel_id, channel_type)
    -> the seq the caller already has (person channels by the peer's uid)."""
    known = "|".join(f"{cid}:{ct}:{seq}" for (cid, ct), seq in (last_msg_seqs or {}).items())
    body = {
        "uid": uid,
        "version": version,
        "last_msg_seqs": known,
        "msg_count": msg_count,
        "only_unread": int(only_unread),
        "exclude_channel_types": list(exclude_channel_types),
        "page": page,
        "page_size": page_size,
    }
    return Call(
        "POST", "/conversation/sync", lambda d: [Conversation.from_json(c) for c in d], body=body
    )


ConversationAction = Literal["clearUnread", "delete", "clearMessages"]


def conversation_change(
    action: ConversationAction, uid: str, channel_id: str, channel_type: int, message_seq: int = 0
) -> Call[None]:
    """``clearUnread`` (read up to ``message_seq``, 0 = the head), ``delete`` (hide until a
    newer message) or ``clearMessages`` (hide every message up to ``message_seq``)."""
    body = {"uid": uid, **_channel(channel_id, channel_type), "message_seq": message_seq}
    return _post(f"/conversations/{action}", body)


def set_unread(uid: str, channel_id: str, channel_type: int, unread: int) -> Call[None]:
    """Show ``unread`` unread messages until the next ``clearUnread``."""
    body = {"uid": uid, **_channel(channel_id, channel_type), "unread": unread}
    return _post("/conversations/setUnread", body)
