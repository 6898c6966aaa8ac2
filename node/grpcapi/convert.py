"""Protobuf messages <-> the HTTP API's JSON documents, by walking the message descriptors.

The v1 protos name their fields exactly like the HTTP API's JSON fields, so one generic
conversion serves every RPC. ``json_format`` is not used because it writes 64-bit integers as
strings and bools as JSON booleans, which the HTTP handlers' field checks refuse; here ints stay
ints, bools become the API's 0/1 flags and ``bytes`` are the API's base64 strings.

Only fields that are set go into the JSON (proto3: a scalar at its default is "absent"), so that
the handlers apply their own defaults, and ``optional`` fields say absent from 0.
"""

from __future__ import annotations

import base64
import json
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_INTS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_ENUM,
}
M = TypeVar("M", bound=Message)
_FLOATS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}


def _is_map(fd: Any) -> bool:
    return bool(fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry)


# ---- proto -> JSON -----------------------------------------------------------------------------


def to_json(msg: Message) -> dict[str, Any]:
    """The set fields of ``msg`` as the HTTP API's JSON object."""
    return {fd.name: _field_to_json(fd, value) for fd, value in msg.ListFields()}


def _field_to_json(fd: Any, value: Any) -> Any:
    if _is_map(fd):
        value_fd = fd.message_type.fields_by_name["value"]
        return {k: _scalar_to_json(value_fd, v) for k, v in value.items()}
    if fd.is_repeated:
        return [_scalar_to_json(fd, v) for v in value]
    return _scalar_to_json(fd, value)


def _scalar_to_json(fd: Any, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return to_json(value)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return int(value)  # the HTTP API's flags are 0/1
    return value


# ---- JSON -> proto -----------------------------------------------------------------------------


def from_json(data: dict[str, Any], msg: M) -> M:
    """Fill ``msg`` from an HTTP API answer; members the proto does not name, and nulls, are
    skipped (the HTTP API may grow members before the proto does)."""
    # Descriptors are typed loosely: the upb and pure-Python stubs disagree.
    fields: Any = msg.DESCRIPTOR.fields_by_name
    for name, value in data.items():
        fd = fields.get(name)
        if fd is None or value is None:
            continue
        target: Any = getattr(msg, name)
        if _is_map(fd):
            value_fd = fd.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    from_json(v, target[str(k)])
                else:
                    target[str(k)] = _scalar_from_json(value_fd, v)
        elif fd.is_repeated:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                for v in value:
                    from_json(v, target.add())
            else:
                target.extend(_scalar_from_json(fd, v) for v in value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            target.SetInParent()
            from_json(value, target)
        else:
            setattr(msg, name, _scalar_from_json(fd, value))
    return msg


def _scalar_from_json(fd: Any, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64decode(value) if isinstance(value, str) else bytes(value)
    if fd.type == FieldDescriptor.TYPE_STRING:
        if isinstance(value, str):
            return value
        # A structured member where the proto keeps a document (say, a cluster map).
        return (
            json.dumps(value, separators=(",", ":"))
            if isinstance(value, dict | list)
            else str(value)
        )
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return bool(value)
    if fd.type in _INTS:
        return int(value)
    if fd.type in _FLOATS:
        return float(value)
    raise TypeError(f"field {fd.full_name}: unsupported type {fd.type}")
