"""Reading typed fields from a JSON request body, with 400 errors that name the field."""

from __future__ import annotations

from typing import Any

from .server import bad_request

_MISSING = object()


def get_str(body: dict[str, Any], name: str, *, required: bool = False, default: str = "") -> str:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise bad_request(f"{name} is required")
        return default
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string")
    if required and not value:
        raise bad_request(f"{name} must not be empty")
    return value


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def get_int(
    body: dict[str, Any],
    name: str,
    *,
    required: bool = False,
    default: int = 0,
    choices: set[int] | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise bad_request(f"{name} is required")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer")
    # Every integer of the API is stored in (or compared with) 64 bits: beyond them a value is
    # refused here, not by a struct.pack or a protobuf field deep in a handler (a 500).
    if not INT64_MIN <= value <= INT64_MAX:
        raise bad_request(f"{name} must fit in 64 signed bits")
    if choices is not None and value not in choices:
        raise bad_request(f"{name} must be one of {sorted(choices)}, got {value}")
    if minimum is not None and value < minimum:
        raise bad_request(f"{name} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise bad_request(f"{name} must be at most {maximum}")
    return value


def get_flag(body: dict[str, Any], name: str) -> bool | None:
    """A WuKongIM 0/1 flag; ``None`` when absent (leave the stored value alone)."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return None
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise bad_request(f"{name} must be 0 or 1")


def get_str_list(body: dict[str, Any], name: str, *, required: bool = False) -> list[str]:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise bad_request(f"{name} is required")
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{name} must be a list of strings")
    return value


def message_id_of(value: Any, what: str) -> int:
    """A message id given as a JSON integer or as its decimal string (``message_idstr``:
    WuKongIM clients often send ids as strings, JavaScript cannot hold 64 bits)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise bad_request(f"{what}: a message id is an integer or its decimal string")
    return value


def get_message_id(body: dict[str, Any], name: str = "message_id") -> int:
    """The optional message id field ``name``; 0 when absent."""
    value = body.get(name)
    return 0 if value is None else message_id_of(value, name)
