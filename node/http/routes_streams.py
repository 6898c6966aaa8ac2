"""Stream messages: ``POST /message/event`` appends an event to an anchor message sent with
``is_stream``; ``POST /message/eventsync`` pages one message's events. The events are kept in
the channel's slot group (``groups/streams.py``) and pushed as EVENT frames to sessions of
protocol 5 and later. See ``docs/messaging.md`` (Stream messages)."""

from __future__ import annotations

import json
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb

from ..groups.streams import MAX_PAGE, STATUS_OF, event_view
from ..pipeline_rules import SYSTEM_UID
from .common import ApiContext, RouteTable, check_id, person_or_channel
from .fields import get_flag, get_int, get_message_id, get_str
from .routes_sends import sender
from .server import ApiError, Request, Response, bad_request

MAX_EVENT_ID_BYTES = 128
MAX_EVENT_KEY_BYTES = 64
_VISIBILITY = {"public": False, "private": True}


def _anchor(body: dict[str, Any], viewer_field: str) -> tuple[str, str, int, str, int]:
    """(anchor sender, canonical channel id, channel type, client_msg_no, message id).

    A person channel is named in the view of ``viewer_field`` (``from_uid`` if that is absent).
    """
    from_uid = sender(body)
    viewer = get_str(body, viewer_field) or ("" if from_uid == SYSTEM_UID else from_uid)
    _, cid, ctype = person_or_channel({**body, viewer_field: viewer}, viewer_field)
    client_msg_no = get_str(body, "client_msg_no")
    message_id = get_message_id(body)
    if not client_msg_no and not message_id:
        raise bad_request("client_msg_no (or message_id) of the stream's anchor is required")
    return from_uid, cid, ctype, client_msg_no, message_id


def _bounded(body: dict[str, Any], name: str, limit: int, *, default: str | None = None) -> str:
    """A string field of at most ``limit`` bytes; required unless it has a ``default``."""
    value = get_str(body, name, required=default is None, default=default or "")
    if len(value.encode()) > limit:
        raise bad_request(f"{name} is longer than {limit} bytes")
    return value


def _event_payload(ctx: ApiContext, body: dict[str, Any], event_type: str) -> bytes:
    payload = body.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise bad_request("payload must be a JSON object")
    if event_type == "stream.delta" and not isinstance(payload.get("delta"), str):
        raise bad_request("payload.delta must be a string for stream.delta")
    raw = json.dumps(payload, separators=(",", ":")).encode()
    limit = ctx.config.messages.max_payload_bytes
    if len(raw) > limit:
        raise bad_request(f"payload is larger than {limit} bytes")
    return raw


def _refusal(data: dict[str, Any]) -> None:
    if "not_found" in data:
        raise ApiError(404, f"anchor message: {data['not_found']}")
    if "conflict" in data:
        raise ApiError(409, str(data["conflict"]))


async def message_event(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    from_uid, cid, ctype, client_msg_no, message_id = _anchor(body, "from_uid")
    event_type = get_str(body, "event_type", required=True)
    if event_type not in STATUS_OF:
        raise bad_request(f"event_type must be one of {', '.join(sorted(STATUS_OF))}")
    event_id = _bounded(body, "event_id", MAX_EVENT_ID_BYTES)
    event_key = _bounded(body, "event_key", MAX_EVENT_KEY_BYTES, default="main")
    check_id(event_key, "event_key")
    visibility = get_str(body, "visibility", default="public")
    if visibility not in _VISIBILITY:
        raise bad_request("visibility must be public or private")
    op = pb.StreamEvent(
        channel_id=cid,
        channel_type=ctype,
        from_uid=from_uid,
        client_msg_no=client_msg_no,
        message_id=message_id,
        event_id=event_id,
        event_type=event_type,
        event_key=event_key,
        private=_VISIBILITY[visibility],
        payload=_event_payload(ctx, body, event_type),
        occurred_at=get_int(body, "occurred_at", minimum=0),
        snapshot_limit=ctx.config.messages.stream_snapshot_bytes,
    )
    result = await ctx.router.meta(cid, pb.MetaOp(stream_event=op))
    if result.detail and not result.data:
        raise ApiError(500, result.detail, reason=int(result.reason))
    done: dict[str, Any] = json.loads(result.data)
    _refusal(done)
    event = done["event"]
    if done["parties"]:
        await ctx.router.fanout.push_event(
            pb.EventPush(
                uids=done["parties"],
                channel_id=cid,
                channel_type=ctype,
                event_id=event_id,
                event_type=event_type,
                timestamp_ms=event["timestamp_ms"],
                data=json.dumps(event, separators=(",", ":")).encode(),
            )
        )
    viewer = "" if from_uid == SYSTEM_UID else from_uid
    shown = event_view(event, viewer)
    return Response(
        200,
        {
            "status": 200,
            "channel_id": shown["channel_id"],
            "channel_type": ctype,
            "from_uid": shown["from_uid"],
            "client_msg_no": event["client_msg_no"],
            "message_id": event["message_id"],
            "message_idstr": str(event["message_id"]),
            "event_id": event_id,
            "event_key": event["event_key"],
            "msg_event_seq": event["msg_event_seq"],
            "stream_status": event["stream_status"],
            "duplicate": 1 if done["duplicate"] else 0,
        },
    )


async def event_sync(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    from_uid, cid, ctype, client_msg_no, message_id = _anchor(body, "login_uid")
    query = {
        "q": "stream_events",
        "channel_id": cid,
        "channel_type": ctype,
        "from_uid": from_uid,
        "client_msg_no": client_msg_no,
        "mid": message_id,
        "event_key": _bounded(body, "event_key", MAX_EVENT_KEY_BYTES, default=""),
        "from_msg_event_seq": get_int(body, "from_msg_event_seq", default=1, minimum=0),
        "limit": get_int(body, "limit", default=100, minimum=1, maximum=MAX_PAGE),
        "include_private": bool(get_flag(body, "include_private")),
    }
    found = await ctx.router.read(cid, query)
    if found is None:
        raise ApiError(404, "anchor message: no such message in this channel (or it is gone)")
    viewer = get_str(body, "login_uid") or ("" if from_uid == SYSTEM_UID else from_uid)
    return Response(
        200,
        {
            "status": 200,
            "events": [event_view(e, viewer) for e in found["events"]],
            "more": 1 if found["more"] else 0,
            "next_msg_event_seq": found["next_msg_event_seq"],
            "event_meta": found["event_meta"],
        },
    )


ROUTES: RouteTable = (
    ("POST", "/message/event", message_event),
    ("POST", "/message/eventsync", event_sync),
)
