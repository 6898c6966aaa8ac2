"""Exceptions raised by the client library, all under ``ClientError``.

Reason codes are WKProto's (``proto.wkproto.ReasonCode``): the server gives one with a refused
CONNECT, a refused SEND, and HTTP errors that have a precise cause (403 send refused, 404
channel missing, 429 rate limit, 503 cluster unavailable).
"""

from __future__ import annotations

from typing import Any, overload

from proto.wkproto import ReasonCode


@overload
def as_reason(code: int) -> ReasonCode | int: ...
@overload
def as_reason(code: None) -> None: ...
def as_reason(code: int | None) -> ReasonCode | int | None:
    """``code`` as a ``ReasonCode`` member when it is one (nicer in messages and comparisons),
    else unchanged: a newer server may send codes this client does not know."""
    if code is None:
        return None
    try:
        return ReasonCode(code)
    except ValueError:
        return code


class ClientError(Exception):
    """Base class of every error the client raises on its own account."""


class ConnectRefused(ClientError):
    """The server answered CONNACK with a reason code other than SUCCESS (1)."""

    def __init__(self, reason_code: int, message: str = "") -> None:
        self.reason_code = as_reason(reason_code)
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


class SendRefused(ClientError):
    """A WKProto SEND was answered with a SENDACK other than SUCCESS (raised by the session;
    the bare ``WKClient.send`` returns the SENDACK's reason code instead)."""

    def __init__(self, reason_code: int, client_msg_no: str) -> None:
        self.reason_code = as_reason(reason_code)
        self.client_msg_no = client_msg_no
        super().__init__(f"send {client_msg_no} refused: reason code {self.reason_code!r}")


# --- HTTP API ------------------------------------------------------------------------------


class ApiError(ClientError):
    """The HTTP API answered with an error status. ``message`` is the server's ``msg``;
    ``reason_code`` its ``reason`` when it gave one. Subclasses name the common statuses."""

    def __init__(
        self,
        status: int,
        message: str,
        reason_code: int | None = None,
        *,
        method: str = "",
        path: str = "",
        body: Any = None,
    ) -> None:
        self.status = status
        self.message = message
        self.reason_code = as_reason(reason_code)
        self.method = method
        self.path = path
        self.body = body
        """The decoded JSON answer (None when it was not JSON)."""
        reason = f" (reason {self.reason_code!r})" if reason_code is not None else ""
        super().__init__(f"{method} {path}: HTTP {status}: {message}{reason}".lstrip())


class BadRequest(ApiError):
    """400: the request is malformed; ``message`` names the field."""


class Unauthorized(ApiError):
    """401: no token, or not the right one: the API token (``api_token=``) for the product
    routes, the admin token (``admin_token=``) for ``/cluster/*``."""


class Refused(ApiError):
    """403: a send or message operation was refused; ``reason_code`` says why (or, without a
    reason, cluster administration that the nodes have not enabled)."""


class NotFound(ApiError):
    """404: no such route, channel (``reason_code`` 5) or message."""


class Conflict(ApiError):
    """409: a membership request conflicts with the cluster's current members."""


class PayloadTooLarge(ApiError):
    """413: the request body is over the server's ``http.max_body_bytes``."""


class RateLimited(ApiError):
    """429 (``reason_code`` 22): the channel is over its send rate; retrying later is safe."""


class ServerError(ApiError):
    """500: the server failed; the message leaves internals out."""


class Unavailable(ApiError):
    """503: the cluster could not serve the request in time (``reason_code`` 17 no leader, 18
    leader moved or outcome unknown, 10 leader unreachable). ``HttpClient`` already retried it."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Refused,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    500: ServerError,
    503: Unavailable,
}


def api_error(
    status: int, message: str, reason_code: int | None, *, method: str, path: str, body: Any
) -> ApiError:
    """The ``ApiError`` subclass for an HTTP status (plain ``ApiError`` for the others)."""
    cls = _BY_STATUS.get(status, ApiError)
    return cls(status, message, reason_code, method=method, path=path, body=body)


class Unreachable(ClientError):
    """No node of the list gave a complete answer (refused, reset or timed out), after the
    retries. ``errors`` holds the last failure of each attempt, in order. A request that was
    written but not answered may have taken effect."""

    def __init__(self, message: str, errors: list[BaseException]) -> None:
        self.errors = errors
        super().__init__(message)


class Disconnected(ClientClosed):
    """The server ended the session with DISCONNECT (``reason_code`` 12, ConnectKick: a login
    elsewhere took the session's place, or the token was withdrawn). A reconnecting session
    stops instead of fighting the other login."""

    def __init__(self, reason_code: int, reason: str) -> None:
        self.reason_code = as_reason(reason_code)
        super().__init__(f"disconnected by the server: reason code {self.reason_code!r} {reason}")
