"""JSON-RPC 2.0 error codes and the codec's one error type."""

from __future__ import annotations

from proto.wkproto.errors import ProtocolError

RequestId = str | int | None
"""A request's ``id`` as the client sent it (``None``: a notification, or not known)."""

PARSE_ERROR = -32700
"""The message is not JSON (or not UTF-8)."""
INVALID_REQUEST = -32600
"""JSON, but not a request we take: a batch, a response, no or a bad ``method`` or ``id``."""
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
SESSION_STATE = -32000
"""A known method at the wrong time: anything before ``connect``, or a second ``connect``
(JSON-RPC leaves -32000..-32099 to the server)."""


class JsonRpcError(ProtocolError):
    """Input the codec refuses. ``fatal`` errors end the session; the others cost one request."""

    def __init__(
        self, code: int, message: str, request_id: RequestId = None, *, fatal: bool = True
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.fatal = fatal
