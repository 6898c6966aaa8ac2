"""JSON-RPC 2.0 as WuKongIM serves it on its WebSocket port, as a sans-IO session codec.

One WebSocket message holds one JSON-RPC message (text or binary, UTF-8). Client methods
become the WKProto frames the gateway session already handles, and the session's frames
become results and notifications, so everything after decoding (checks, limits, the send
path) is the same for both protocols:

    connect -> Connect        Connack  -> result of connect
    send    -> Send           Sendack  -> result of that send (by the request's id)
    recvack -> Recvack        Recv     -> ``recv`` notification
    ping    -> Ping           Pong     -> result of that ping ({})
    disconnect -> Disconnect  Disconnect -> ``disconnect`` notification; Event -> ``event``

Refused input comes out of :meth:`JsonRpcCodec.next_frame` as an :class:`Answer`: the error
response to send (none for a notification, which JSON-RPC never answers) and whether the
session then closes. Only bad ``params`` of a request after ``connect`` leave the session
open; everything else (not JSON, not a request, a batch, an unknown method, a request out of
order, bad ``connect`` params) closes it, as WuKongIM does for a wrong format or an unknown
method. ``docs/protocol.md`` ("JSON-RPC") is the client-facing description.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from proto.wkproto import (
    LATEST_VERSION,
    Connack,
    Disconnect,
    Event,
    Frame,
    Ping,
    Pong,
    Recv,
    Sendack,
)

from . import params as p
from . import render
from .errors import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SESSION_STATE,
    JsonRpcError,
    RequestId,
)

MAX_DEPTH = 64
"""Objects and arrays nested deeper than this (the payload included) refuse the message."""
MAX_ID_CHARS = 256
METHODS = frozenset({"connect", "send", "recvack", "ping", "disconnect"})

_WHITESPACE = " \t\r\n"


@dataclass(frozen=True, slots=True)
class Answer:
    """The codec's reply to input it refused."""

    text: str | None
    """The error response, or ``None`` (a notification is never answered)."""
    close: bool
    """Whether the session ends after sending it."""
    reason: str


def starts_json(data: bytes | str) -> bool | None:
    """Whether a connection's first message is JSON-RPC: its first non-whitespace character is
    ``{`` or ``[`` (a WKProto CONNECT starts with 0x10-0x1F). ``None`` while there is none."""
    if isinstance(data, str):
        first = data.lstrip(_WHITESPACE)[:1]
        return (first in "{[") if first else None
    head = data.lstrip(_WHITESPACE.encode())[:1]
    return (head in (b"{", b"[")) if head else None


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


def _too_deep(doc: Any, limit: int) -> bool:
    # Iterative: the parser allows nesting up to the interpreter's recursion limit.
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse(message: bytes | str) -> Any:
    """The JSON value of one message, or ``JsonRpcError`` (parse error)."""
    if isinstance(message, bytes):
        try:
            message = message.decode()
        except UnicodeDecodeError:
            raise JsonRpcError(PARSE_ERROR, "not UTF-8") from None
    try:
        doc = json.loads(message, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise JsonRpcError(PARSE_ERROR, f"not JSON: {e.msg} at character {e.pos}") from None
    except _NotJson as e:
        raise JsonRpcError(PARSE_ERROR, f"not JSON: {e}") from None
    except ValueError:  # an integer beyond Python's digit limit for int <-> str
        raise JsonRpcError(PARSE_ERROR, "not JSON: a number has too many digits") from None
    except RecursionError:
        raise JsonRpcError(PARSE_ERROR, "not JSON: nested too deeply") from None
    # Counting brackets first spares the walk for every message that cannot nest that deep.
    brackets = message.count("{") + message.count("[")
    if brackets > MAX_DEPTH and isinstance(doc, dict | list) and _too_deep(doc, MAX_DEPTH):
        raise JsonRpcError(INVALID_REQUEST, f"nested deeper than {MAX_DEPTH} levels")
    return doc


def _request_id(doc: dict[str, Any]) -> RequestId:
    rid = doc.get("id")
    if rid is None:
        return None
    if isinstance(rid, str):
        if len(rid) <= MAX_ID_CHARS and rid.isprintable():
            return rid
    elif isinstance(rid, int) and not isinstance(rid, bool) and p.I64_MIN <= rid <= p.I64_MAX:
        return rid
    raise JsonRpcError(
        INVALID_REQUEST, f"id must be a string of at most {MAX_ID_CHARS} characters or an integer"
    )


class JsonRpcCodec:
    """One session's JSON-RPC state: which request each answer belongs to."""

    name = "jsonrpc"
    encrypts = False
    """JSON payloads are never encrypted (WuKongIM's JSON-RPC has no key exchange)."""

    def __init__(self) -> None:
        self.version = LATEST_VERSION
        """Set by the session after CONNECT; the JSON form does not depend on it."""
        self._ready: deque[Frame | Answer] = deque()
        self._connect_seen = False
        self._connect_id: RequestId = None
        self._client_seqs = itertools.count(1)
        # Every SEND and PING the session takes is answered exactly once (SENDACK, PONG), so
        # these hold only what is in flight: at most the session's SENDS_IN_FLIGHT sends.
        self._send_ids: dict[int, RequestId] = {}
        self._ping_ids: deque[RequestId] = deque()

    # --- inbound --------------------------------------------------------------------------

    def feed(self, message: bytes | str) -> None:
        """Take one whole WebSocket message."""
        try:
            self._ready.append(self._decode(message))
        except JsonRpcError as e:
            self._ready.append(self._refusal(e))

    def next_frame(self) -> Frame | Answer | None:
        return self._ready.popleft() if self._ready else None

    def _refusal(self, e: JsonRpcError) -> Answer:
        # A request is answered with its id; input whose id is unknown (not JSON, not a
        # request) with id null; a notification not at all (JSON-RPC 2.0, section 4.1).
        answered = e.request_id is not None or e.code in (PARSE_ERROR, INVALID_REQUEST)
        text = render.error(e.request_id, e.code, e.message) if answered else None
        return Answer(text=text, close=e.fatal, reason=f"{e.code} {e.message}")

    def _decode(self, message: bytes | str) -> Frame:
        doc = parse(message)
        if isinstance(doc, list):
            raise JsonRpcError(INVALID_REQUEST, "batches are not served: one request a message")
        if not isinstance(doc, dict):
            raise JsonRpcError(INVALID_REQUEST, "a request is a JSON object")
        if doc.get("jsonrpc", "2.0") != "2.0":
            raise JsonRpcError(INVALID_REQUEST, 'jsonrpc must be "2.0"')
        rid = _request_id(doc)
        method = doc.get("method")
        if not isinstance(method, str):
            what = "responses" if "result" in doc or "error" in doc else "a request without method"
            raise JsonRpcError(INVALID_REQUEST, f"the server takes no {what}", rid)
        if method not in METHODS:
            # Not echoed whole: a method name can be as long as the message.
            raise JsonRpcError(METHOD_NOT_FOUND, f"unknown method {method[:64]!r}", rid)
        if method == "connect" and self._connect_seen:
            raise JsonRpcError(SESSION_STATE, "already connected", rid)
        if method != "connect" and not self._connect_seen:
            raise JsonRpcError(SESSION_STATE, "the first request must be connect", rid)
        params = doc.get("params")
        if params is None or method == "ping":
            params = {}  # ping's params mean nothing (null, {} or absent in the EasySDKs)
        try:
            if not isinstance(params, dict):
                raise p.BadParams("params must be an object")
            return self._frame(method, params, rid)
        except p.BadParams as e:
            # A session exists once connect went through; a bad connect leaves none.
            raise JsonRpcError(INVALID_PARAMS, str(e), rid, fatal=method == "connect") from None

    def _frame(self, method: str, params: dict[str, Any], rid: RequestId) -> Frame:
        match method:
            case "connect":
                frame: Frame = p.connect(params)
                self._connect_seen, self._connect_id = True, rid
            case "send":
                seq = next(self._client_seqs)
                frame = p.send(params, seq)
                if rid is not None:
                    self._send_ids[seq] = rid
            case "recvack":
                frame = p.recvack(params)
            case "ping":
                frame = Ping()
                self._ping_ids.append(rid)
            case _:
                frame = p.disconnect(params)
        return frame

    # --- outbound -------------------------------------------------------------------------

    def encode(self, frame: Frame) -> str | None:
        """The JSON-RPC text of a frame from the session; ``None`` when it has none (the answer
        to a notification, or a frame JSON-RPC does not carry)."""
        match frame:
            case Recv():
                return render.recv(frame)
            case Sendack():
                rid = self._send_ids.pop(frame.client_seq, None)
                return None if rid is None else render.sendack(rid, frame)
            case Pong():
                rid = self._ping_ids.popleft() if self._ping_ids else None
                return None if rid is None else render.pong(rid)
            case Connack():
                rid, self._connect_id = self._connect_id, None
                return None if rid is None else render.connack(rid, frame)
            case Disconnect():
                return render.disconnect(frame)
            case Event():
                return render.event(frame)
        return None
