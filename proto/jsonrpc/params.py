"""The ``params`` of each client method, read into the WKProto frames the session handles.

Every value is checked for its JSON type and for the range its WKProto field has on the wire,
so a frame built here is one the binary decoder could also have produced: strings are valid
UTF-8 of at most 32 767 bytes, integers fit their field, flags are booleans. A JSON ``null``
counts as absent, as it does for WuKongIM's Go structs. Unknown members are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from proto.wkproto import Connect, Disconnect, HeaderFlag, Recvack, Send, Setting
from proto.wkproto.enums import MAX_STRING_LENGTH

U8 = 0xFF
U32 = 0xFFFFFFFF
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
U64 = (1 << 64) - 1

HEADER_FLAGS = {
    "noPersist": HeaderFlag.NO_PERSIST,
    "redDot": HeaderFlag.RED_DOT,
    "syncOnce": HeaderFlag.SYNC_ONCE,
    "dup": HeaderFlag.DUP,
}
SETTING_FLAGS = {
    "receipt": Setting.RECEIPT,
    "signal": Setting.SIGNAL,
    "stream": Setting.STREAM,
    "topic": Setting.TOPIC,
}

_MISSING = object()


class BadParams(Exception):
    """One parameter is missing or not what its method takes; the message names it."""


def _get(params: Mapping[str, Any], name: str, required: bool) -> Any:
    value = params.get(name)
    if value is None:
        if required:
            raise BadParams(f"{name} is required")
        return _MISSING
    return value


def text(params: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = _get(params, name, required)
    if value is _MISSING:
        return ""
    if not isinstance(value, str):
        raise BadParams(f"{name} must be a string")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
        raise BadParams(f"{name} is not valid Unicode") from None
    if size > MAX_STRING_LENGTH:
        raise BadParams(f"{name} is longer than {MAX_STRING_LENGTH} bytes")
    return value


def integer(
    params: Mapping[str, Any], name: str, low: int, high: int, *, required: bool = False
) -> int:
    value = _get(params, name, required)
    if value is _MISSING:
        return 0
    # bool is an int in Python, never in JSON; 1.0 is a float (Go refuses it for an int too).
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadParams(f"{name} must be an integer")
    if not low <= value <= high:
        raise BadParams(f"{name} must be between {low} and {high}")
    return value


def flags(params: Mapping[str, Any], name: str, table: Mapping[str, int]) -> int:
    value = _get(params, name, False)
    if value is _MISSING:
        return 0
    if not isinstance(value, dict):
        raise BadParams(f"{name} must be an object of booleans")
    out = 0
    for key, bit in table.items():
        flag = value.get(key)
        if flag is None:
            continue
        if not isinstance(flag, bool):
            raise BadParams(f"{name}.{key} must be a boolean")
        if flag:
            out |= bit
    return out


def payload(params: Mapping[str, Any]) -> bytes:
    """A JSON object is stored as its compact UTF-8 JSON text; a string must be standard base64
    (with padding) of the payload bytes, what WuKongIM's code and the EasySDKs send."""
    value = _get(params, "payload", True)
    if isinstance(value, dict):
        try:
            return json.dumps(
                value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
        except ValueError:  # a number beyond float range, or a lone surrogate
            raise BadParams("payload holds a value JSON text cannot carry") from None
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadParams("payload string is not base64") from None
    raise BadParams("payload must be a JSON object or a base64 string")


def connect(params: Mapping[str, Any]) -> Connect:
    return Connect(
        version=integer(params, "version", 0, U8),
        device_flag=integer(params, "deviceFlag", 0, U8),
        device_id=text(params, "deviceId"),
        uid=text(params, "uid", required=True),
        token=text(params, "token"),
        client_timestamp=integer(params, "clientTimestamp", I64_MIN, I64_MAX),
        client_key=text(params, "clientKey"),
        flags=flags(params, "header", HEADER_FLAGS),
    )


def send(params: Mapping[str, Any], client_seq: int) -> Send:
    topic = text(params, "topic")
    setting = flags(params, "setting", SETTING_FLAGS)
    if topic:
        # WKProto carries a topic only under this bit; the EasySDKs send the field alone.
        setting |= Setting.TOPIC
    return Send(
        setting=setting,
        client_seq=client_seq,
        client_msg_no=text(params, "clientMsgNo"),
        channel_id=text(params, "channelId", required=True),
        channel_type=integer(params, "channelType", 0, U8, required=True),
        payload=payload(params),
        msg_key=text(params, "msgKey"),
        expire=integer(params, "expire", 0, U32),
        topic=topic,
        stream_no=text(params, "streamNo"),
        flags=flags(params, "header", HEADER_FLAGS),
    )


def message_id(params: Mapping[str, Any]) -> int:
    """``messageId`` is a decimal string (JavaScript numbers lose int64 precision); a plain
    integer is taken too."""
    value = _get(params, "messageId", True)
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= 19):
            raise BadParams("messageId must be a decimal string")
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= I64_MAX:
        raise BadParams("messageId must be a decimal string of a 64-bit id")
    return value


def recvack(params: Mapping[str, Any]) -> Recvack:
    return Recvack(
        message_id=message_id(params),
        message_seq=integer(params, "messageSeq", 0, U64, required=True),
        flags=flags(params, "header", HEADER_FLAGS),
    )


def disconnect(params: Mapping[str, Any]) -> Disconnect:
    return Disconnect(
        reason_code=integer(params, "reasonCode", 0, U8), reason=text(params, "reason")
    )
