"""JSON-RPC 2.0 over WebSocket, WuKongIM's second client protocol, as a sans-IO codec onto the
WKProto frames (``codec.py`` explains the mapping; ``docs/protocol.md`` the wire format)."""

from .codec import MAX_DEPTH, METHODS, Answer, JsonRpcCodec, parse, starts_json
from .errors import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SESSION_STATE,
    JsonRpcError,
    RequestId,
)

__all__ = [
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MAX_DEPTH",
    "METHODS",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "SESSION_STATE",
    "Answer",
    "JsonRpcCodec",
    "JsonRpcError",
    "RequestId",
    "parse",
    "starts_json",
]
