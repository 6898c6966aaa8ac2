"""WuKongIM's payload conventions from the client's side: a payload is a JSON object whose
``type`` says what it is (``docs/messaging.md``, "Payload conventions"). ``text`` builds the
payload of a text message; ``describe`` turns any payload into one readable line for a
terminal. Pure functions, no I/O.

The server checks the documented types (``node/payload_conventions.py``); the client only
needs their numbers and field names, kept here so that it does not depend on the node.
Types 5-7 are not in WuKongIM's message API document; their fields here are the ones WuKongIM's
SDKs and apps commonly use, read only when present.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from typing import Any

TEXT, IMAGE, GIF, VOICE, VIDEO, LOCATION, CARD, FILE = 1, 2, 3, 4, 5, 6, 7, 8
COMMAND = 99
SYSTEM_ABOVE = 1000
"""Types above 1000 are notices written by the server or the app's backend."""

MAX_FALLBACK_CHARS = 200
"""An undocumented payload shown as text is cut here: it may be anything up to the size limit."""


def text(content: str) -> bytes:
    """The payload of a text message: ``{"type": 1, "content": ...}`` in UTF-8 (a character
    that UTF-8 cannot hold, such as an undecodable input byte, becomes ``?``)."""
    return json.dumps(
        {"type": TEXT, "content": content}, ensure_ascii=False, separators=(",", ":")
    ).encode(errors="replace")


def parse(payload: bytes) -> dict[str, Any] | None:
    """The payload as a JSON object with an integer ``type``, or None when it is not one."""
    if payload.lstrip()[:1] != b"{":
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if isinstance(kind, bool) or not isinstance(kind, int):
        return None
    return obj


def describe(payload: bytes) -> str:
    """One line a person can read: the text of a text message, a bracketed summary of other
    documented types (``[image 640x480] https://...``, ``[file report.pdf 12 KB] ...``), a
    notice's text, and a short fallback for anything else. Control characters and line breaks
    are shown as escapes, so a payload cannot move the cursor or split the line."""
    obj = parse(payload)
    if obj is not None:
        return safe(_typed(obj))
    if not payload:
        return "[empty message]"
    try:
        plain = payload.decode("utf-8")
    except UnicodeDecodeError:
        return f"[binary payload, {_size(len(payload))}]"
    return safe(_cut(plain))


_ESCAPED = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


def safe(s: str) -> str:
    """``s`` on one line with nothing a terminal would act on: a line break shows as ``⏎``,
    other control and format characters (ESC, BEL, bidi overrides, ...), private-use and
    unassigned code points (whose width a terminal cannot know) as ``\\x1b``-style escapes."""
    out = []
    for ch in s:
        if ch == "\n":
            out.append(" ⏎ ")
        elif ch == "\t":
            out.append(" ")
        elif unicodedata.category(ch) in _ESCAPED:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _typed(obj: dict[str, Any]) -> str:
    kind: int = obj["type"]
    render = _RENDER.get(kind)
    if render is not None:
        return render(obj)
    if kind > SYSTEM_ABOVE:
        return _notice(obj)
    content = obj.get("content")
    if isinstance(content, str):
        return f"[type {kind}] {_cut(content)}"
    return f"[message of type {kind}]"


def _text(obj: dict[str, Any]) -> str:
    content = obj.get("content")
    if not isinstance(content, str):
        return "[text without content]"
    reply = obj.get("reply")
    if isinstance(reply, dict):
        who = _str(reply.get("from_name")) or _str(reply.get("from_uid"))
        if who:
            return f"(reply to {who}) {content}"
    return content


def _media(label: str) -> Callable[[dict[str, Any]], str]:
    def render(obj: dict[str, Any]) -> str:
        parts = [label]
        duration = _num(obj.get("second"))
        if duration is not None:
            parts.append(f"{duration:g} s")
        dims = _dims(obj)
        if dims:
            parts.append(dims)
        return _with_url(f"[{' '.join(parts)}]", obj)

    return render


def _voice(obj: dict[str, Any]) -> str:
    seconds = _num(obj.get("timeTrad"))
    label = "[voice]" if seconds is None else f"[voice {seconds:g} s]"
    return _with_url(label, obj)


def _location(obj: dict[str, Any]) -> str:
    words = [w for w in (_str(obj.get("title")), _str(obj.get("address"))) if w]
    lat = _num(obj.get("lat", obj.get("latitude")))
    lng = _num(obj.get("lng", obj.get("longitude")))
    if lat is not None and lng is not None:
        words.append(f"({lat:g}, {lng:g})")
    return "[location" + "".join(f" {w}" for w in words) + "]"


def _card(obj: dict[str, Any]) -> str:
    name, uid = _str(obj.get("name")), _str(obj.get("uid"))
    if name and uid:
        return f"[contact card {name} ({uid})]"
    return f"[contact card {name or uid}]" if name or uid else "[contact card]"


def _file(obj: dict[str, Any]) -> str:
    parts = ["file"]
    name = _str(obj.get("name"))
    if name:
        parts.append(name)
    size = _num(obj.get("size"))
    if size is not None and size >= 0:
        parts.append(_size(int(size)))
    return _with_url(f"[{' '.join(parts)}]", obj)


def _command(obj: dict[str, Any]) -> str:
    cmd = _str(obj.get("cmd"))
    return f"[command {cmd}]" if cmd else "[command]"


def _notice(obj: dict[str, Any]) -> str:
    """A system notice's ``content`` with its ``{0}``, ``{1}``... placeholders filled from
    ``extra`` (each ``{uid, name}``), as WuKongIM's clients render them."""
    content = obj.get("content")
    if not isinstance(content, str) or not content:
        return f"[notice of type {obj['type']}]"
    extra = obj.get("extra")
    names = extra if isinstance(extra, list) else []
    for i, who in enumerate(names[:100]):
        if isinstance(who, dict):
            shown = _str(who.get("name")) or _str(who.get("uid"))
            content = content.replace(f"{{{i}}}", shown or "?")
    return f"* {_cut(content)}"


_RENDER: dict[int, Callable[[dict[str, Any]], str]] = {
    TEXT: _text,
    IMAGE: _media("image"),
    GIF: _media("GIF"),
    VOICE: _voice,
    VIDEO: _media("video"),
    LOCATION: _location,
    CARD: _card,
    FILE: _file,
    COMMAND: _command,
}


def _with_url(label: str, obj: dict[str, Any]) -> str:
    url = _str(obj.get("url"))
    return f"{label} {url}" if url else label


def _dims(obj: dict[str, Any]) -> str:
    width, height = _num(obj.get("width")), _num(obj.get("height"))
    if width is None or height is None:
        return ""
    return f"{width:g}x{height:g}"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _str(value: Any) -> str:
    return _cut(value) if isinstance(value, str) else ""


def _cut(s: str) -> str:
    return s if len(s) <= MAX_FALLBACK_CHARS else s[: MAX_FALLBACK_CHARS - 1] + "…"


def _size(n: int) -> str:
    """Bytes in the units a person expects: ``512 bytes``, ``12 KB``, ``3.4 MB`` (1 KB = 1024
    bytes)."""
    if n < 1024:
        return "1 byte" if n == 1 else f"{n} bytes"
    value = float(n)
    units = ("KB", "MB", "GB", "TB")
    for i, unit in enumerate(units):
        value /= 1024
        if value < 1024 or i == len(units) - 1:
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    raise AssertionError("unreachable")
