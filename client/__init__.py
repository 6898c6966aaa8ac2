"""The raftchat client library (``docs/client.md``).

* ``client.http``: ``HttpClient`` (trio) and ``SyncHttpClient`` (blocking), the HTTP API;
* ``client.wkproto``: ``open_client``, one WKProto connection (TCP or WebSocket);
* ``client.session``: ``open_session``, a WKProto session that reconnects and catches up;
* ``client.sync``: ``connect_sync``, the same session for blocking code;
* ``client.models`` (typed results) and ``client.errors`` (exceptions with reason codes);
* ``client.payloads``: WuKongIM's payload conventions (build a text payload, render any
  payload as one line).
* ``client.grpc``: ``GrpcClient`` (trio) and ``SyncGrpcClient`` (blocking), the public gRPC
  API (``GrpcError`` is there too: importing it loads grpc).

Everything is importable from ``client`` itself; the modules load on first use (PEP 562), so
that importing ``client`` or its errors does not pull in trio, httpx or the crypto stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ApiError,
    BadRequest,
    ClientClosed,
    ClientError,
    ClosedBeforeConnack,
    Conflict,
    ConnectRefused,
    Disconnected,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Refused,
    SendRefused,
    ServerError,
    Unauthorized,
    Unavailable,
    Unreachable,
)

if TYPE_CHECKING:
    from .grpc import GrpcClient, GrpcError, SyncGrpcClient
    from .http import HttpClient, SyncHttpClient
    from .models import Conversation, Message
    from .session import ConnectionState, Session, open_session
    from .sync import SyncSession, connect_sync
    from .wkproto import ReceivedMessage, SendResult, WKClient, open_client, open_client_over

_LAZY = {
    "GrpcClient": "grpc",
    "GrpcError": "grpc",
    "SyncGrpcClient": "grpc",
    "HttpClient": "http",
    "SyncHttpClient": "http",
    "Conversation": "models",
    "Message": "models",
    "ConnectionState": "session",
    "Session": "session",
    "open_session": "session",
    "SyncSession": "sync",
    "connect_sync": "sync",
    "ReceivedMessage": "wkproto",
    "SendResult": "wkproto",
    "WKClient": "wkproto",
    "open_client": "wkproto",
    "open_client_over": "wkproto",
}

__all__ = [
    "ApiError",
    "BadRequest",
    "ClientClosed",
    "ClientError",
    "ClosedBeforeConnack",
    "Conflict",
    "ConnectRefused",
    "ConnectionState",
    "Conversation",
    "Disconnected",
    "GrpcClient",
    "GrpcError",
    "HttpClient",
    "Message",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ReceivedMessage",
    "Refused",
    "SendRefused",
    "SendResult",
    "ServerError",
    "Session",
    "SyncGrpcClient",
    "SyncHttpClient",
    "SyncSession",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "WKClient",
    "connect_sync",
    "open_client",
    "open_client_over",
    "open_session",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
