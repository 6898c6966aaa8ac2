"""The server's frames as JSON-RPC text: results of requests and notifications.

Field names and types are WuKongIM's (``pkg/protocol/jsonrpc/types.go``): lowerCamelCase,
``messageId`` a decimal string, reason codes passed through from WKProto (1 is success).
``header`` is always present, as an object of the true header flags: the Python and iOS
EasySDKs refuse a ``recv`` without one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from proto.wkproto import Connack, Disconnect, Event, Recv, Sendack

from .errors import RequestId
from .params import HEADER_FLAGS, SETTING_FLAGS


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _bits(value: int, table: Mapping[str, int]) -> dict[str, bool]:
    return {name: True for name, bit in table.items() if value & bit}


def result(request_id: RequestId, body: dict[str, Any]) -> str:
    return dumps({"jsonrpc": "2.0", "id": request_id, "result": body})


def error(request_id: RequestId, code: int, message: str) -> str:
    return dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


def notification(method: str, params: dict[str, Any]) -> str:
    return dumps({"jsonrpc": "2.0", "method": method, "params": params})


def connack(request_id: RequestId, c: Connack) -> str:
    # serverKey and salt are always there (empty: JSON-RPC sessions are never encrypted), since
    # the iOS EasySDK's ConnectResult requires both; the result carries a refusal too, as
    # WuKongIM's code does, and the connection closes after it.
    return result(
        request_id,
        {
            "serverKey": c.server_key,
            "salt": c.salt,
            "timeDiff": c.time_diff,
            "reasonCode": c.reason_code,
            "serverVersion": c.server_version,
            "nodeId": c.node_id,
        },
    )


def sendack(request_id: RequestId, s: Sendack) -> str:
    return result(
        request_id,
        {
            "header": _bits(s.flags, HEADER_FLAGS),
            "messageId": str(s.message_id),
            "messageSeq": s.message_seq,
            "clientMsgNo": s.client_msg_no,
            "reasonCode": s.reason_code,
        },
    )


def pong(request_id: RequestId) -> str:
    # An empty object rather than null: the Android EasySDK reads ``result`` as an object and
    # the Python one requires the member.
    return result(request_id, {})


def payload_json(payload: bytes) -> str:
    """The payload as JSON text: the stored bytes themselves when they are a JSON object (what
    every EasySDK reads directly), else a base64 string of them (what WuKongIM's code always
    writes, and what the JS and Python EasySDKs decode)."""
    try:
        text = payload.decode()
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        return text  # exactly the bytes that were stored, already checked to be strict JSON
    return dumps(base64.b64encode(payload).decode("ascii"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def recv(r: Recv) -> str:
    params: dict[str, Any] = {
        "header": _bits(r.flags, HEADER_FLAGS),
        "messageId": str(r.message_id),
        "messageSeq": r.message_seq,
        "clientMsgNo": r.client_msg_no,
        "timestamp": r.timestamp,
        "channelId": r.channel_id,
        "channelType": r.channel_type,
        "fromUid": r.from_uid,
    }
    if r.setting:
        params["setting"] = _bits(r.setting, SETTING_FLAGS)
    if r.expire:
        params["expire"] = r.expire
    if r.topic:
        params["topic"] = r.topic
    if r.stream_no:
        params.update(streamNo=r.stream_no, streamId=str(r.stream_id), streamFlag=r.stream_flag)
    if r.msg_key:
        params["msgKey"] = r.msg_key
    # The payload goes last and is spliced in as text, so that a JSON object arrives byte for
    # byte as it was stored.
    head = dumps(params)[:-1]
    return (
        '{"jsonrpc":"2.0","method":"recv","params":'
        + head
        + ',"payload":'
        + payload_json(r.payload)
        + "}}"
    )


def disconnect(d: Disconnect) -> str:
    return notification("disconnect", {"reasonCode": d.reason_code, "reason": d.reason})


def event(e: Event) -> str:
    return notification(
        "event",
        {
            "id": e.id,
            "type": e.type,
            "timestamp": e.timestamp,
            "data": e.data.decode(errors="replace"),
        },
    )
