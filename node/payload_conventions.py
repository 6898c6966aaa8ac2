"""The payload conventions of WuKongIM's message API (seed 002, summarised in
``docs/messaging.md``): a JSON object whose ``type`` says what it is.

What the server does with them (``messages.payload_conventions``, on by default):

* Payloads of the documented types must carry that type's fields: text (1) ``content``, image
  and GIF (2, 3) ``url`` (``width``/``height`` numbers if present), voice (4) ``url`` and
  ``timeTrad``, file (8) ``url`` (``name`` text and ``size`` a number if present), command (99)
  ``cmd``; ``mention`` and ``reply`` of any type have their documented shapes. Anything else
  (types 5-7, app types, non-JSON or encrypted payloads) passes untouched: the server must not
  read more into a payload than the documents define.
* A JSON object nested deeper than ``MAX_DEPTH`` or with a number of more than 4300 digits is
  refused (``read``): the server could not check it, and clients could still read it.
* System types (above 1000) render as notices from the server, so only the API (the system uid,
  an HTTP send, a system account) may send them; a client connection may not.
* An HTTP send of a system type or a command that gives no ``header`` gets the recommended
  flags: 1001-1009 sync_once, 1010 red_dot, 99 sync_once.
"""

from __future__ import annotations

from typing import Any

from proto.wkproto import HeaderFlag

from . import safejson

TEXT, IMAGE, GIF, VOICE, FILE, COMMAND = 1, 2, 3, 4, 8, 99
SYSTEM_ABOVE = 1000
KICKED_NOTICE = 1010
"""The one documented system type that raises the red dot and is not sync_once."""
MAX_MENTION_UIDS = 1000
MAX_DEPTH = 64
"""Arrays and objects nested deeper than this make a JSON payload unreadable here. A constant,
not a setting: replicas applying a message (mentions) must read it alike."""

_NAMES = {TEXT: "text", IMAGE: "image", GIF: "GIF", VOICE: "voice", FILE: "file", 99: "command"}
_REQUIRED: dict[int, tuple[tuple[str, type], ...]] = {
    TEXT: (("content", str),),
    IMAGE: (("url", str),),
    GIF: (("url", str),),
    VOICE: (("url", str), ("timeTrad", int)),
    FILE: (("url", str),),
    COMMAND: (("cmd", str),),
}
_OPTIONAL: dict[int, tuple[tuple[str, type], ...]] = {
    IMAGE: (("width", int), ("height", int)),
    GIF: (("width", int), ("height", int)),
    FILE: (("name", str), ("size", int)),
}


def read(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(the payload as a typed JSON object, or ``None`` if it is not one (opaque: passes);
    why it is refused, or ``None``).

    A payload that is JSON but nested deeper than ``MAX_DEPTH`` or holding a number too long
    for Python to convert is refused rather than passed as opaque: the clients that display it
    can parse it, and so it could carry a system type or a malformed mention past the checks.
    """
    if payload.lstrip()[:1] != b"{":
        return None, None  # cheap exit for binary and encrypted payloads
    try:
        obj = safejson.loads(payload, MAX_DEPTH)
    except safejson.JsonBeyondLimits as e:
        return None, f"payload: {e}"
    except safejson.JsonInvalid:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    kind = obj.get("type")
    if isinstance(kind, bool) or not isinstance(kind, int):
        return None, None
    return obj, problem(obj)


def parse(payload: bytes) -> dict[str, Any] | None:
    """The payload as a typed JSON object, or ``None`` if it is not one (or is refused)."""
    return read(payload)[0]


def _is(value: Any, kind: type) -> bool:
    if kind is int:
        # JSON numbers: an SDK may send 12.0; booleans are not numbers here.
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def problem(obj: dict[str, Any]) -> str | None:
    """Why a typed payload breaks its type's convention, or ``None``."""
    kind = obj["type"]
    name = _NAMES.get(kind)
    for field, ftype in _REQUIRED.get(kind, ()):
        if not _is(obj.get(field), ftype):
            what = "a string" if ftype is str else "a number"
            return f"payload: type {kind} ({name}) needs {field} as {what}"
    for field, ftype in _OPTIONAL.get(kind, ()):
        if field in obj and not _is(obj[field], ftype):
            what = "a string" if ftype is str else "a number"
            return f"payload: {field} of type {kind} ({name}) must be {what}"
    return _mention_problem(obj.get("mention")) or _reply_problem(obj.get("reply"))


def _mention_problem(mention: Any) -> str | None:
    if mention is None:
        return None
    if not isinstance(mention, dict):
        return "payload: mention must be an object"
    if mention.get("all", 0) not in (0, 1, True, False):
        return "payload: mention.all must be 0 or 1"
    uids = mention.get("uids", [])
    if uids is None:
        return None
    if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
        return "payload: mention.uids must be a list of uids"
    if len(uids) > MAX_MENTION_UIDS:
        return f"payload: mention.uids names more than {MAX_MENTION_UIDS} uids"
    return None


def _reply_problem(reply: Any) -> str | None:
    if reply is None:
        return None
    if not isinstance(reply, dict):
        return "payload: reply must be an object"
    for field in ("message_seq",):
        if field in reply and not _is(reply[field], int):
            return f"payload: reply.{field} must be a number"
    return None


def is_system_type(obj: dict[str, Any] | None) -> bool:
    return obj is not None and obj["type"] > SYSTEM_ABOVE


def recommended_flags(obj: dict[str, Any] | None) -> int | None:
    """The documented header flags of a system notice or command, or ``None`` (no advice)."""
    if obj is None:
        return None
    kind = obj["type"]
    if kind == KICKED_NOTICE:
        return int(HeaderFlag.RED_DOT)
    if SYSTEM_ABOVE < kind < KICKED_NOTICE or kind == COMMAND:
        return int(HeaderFlag.SYNC_ONCE)
    return None
