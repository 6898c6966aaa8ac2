"""Clients of a raftchat server. ``client.wkproto`` is the WKProto (TCP/WebSocket) client.

The session classes load on first use (PEP 562) so that importing ``client`` or one of its other
modules does not pull in trio, the codec and the crypto stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ClientClosed, ClientError, ClosedBeforeConnack, ConnectRefused

if TYPE_CHECKING:
    from .wkproto import ReceivedMessage, SendResult, WKClient, open_client, open_client_over

__all__ = [
    "ClientClosed",
    "ClientError",
    "ClosedBeforeConnack",
    "ConnectRefused",
    "ReceivedMessage",
    "SendResult",
    "WKClient",
    "open_client",
    "open_client_over",
]

_FROM_WKPROTO = frozenset(
    {"ReceivedMessage", "SendResult", "WKClient", "open_client", "open_client_over"}
)


def __getattr__(name: str) -> Any:
    if name in _FROM_WKPROTO:
        from . import wkproto

        return getattr(wkproto, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
