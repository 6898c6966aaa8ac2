"""Exceptions raised by the WKProto client."""

from __future__ import annotations


class ClientError(Exception):
    """Base class of every error the client raises on its own account."""


class ConnectRefused(ClientError):
    """The server answered CONNACK with a reason code other than SUCCESS (1)."""

    def __init__(self, reason_code: int, message: str = "") -> None:
        self.reason_code = reason_code
        super().__init__(message or f"connection refused with reason code {reason_code}")


class ClientClosed(ClientError):
    """The connection has ended; nothing more can be sent or received on it."""


class ClosedBeforeConnack(ConnectRefused, ClientClosed):
    """The socket closed before any CONNACK arrived (what WuKongIM v2 does on a failed login).

    Both a refusal and a closed connection, so callers catching either one see it; its
    reason code is UNKNOWN (0) because the server never gave one.
    """

    def __init__(self) -> None:
        super().__init__(0, "connection closed before CONNACK")
