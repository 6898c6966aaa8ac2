"""The error model: an HTTP API failure as a gRPC status with the raftchat reason code.

The status code follows the HTTP status; the ``grpc-status-details-bin`` trailer holds a
``google.rpc.Status``-compatible ``raftchat.v1.Status`` carrying one ``ErrorInfo``, and the
reason code is repeated as plain trailing metadata for clients that do not decode details.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import grpc
from google.protobuf import any_pb2

from cluster.bridge import GrpcAbort
from proto.raftchat.v1 import api_pb2

DETAILS_KEY = "grpc-status-details-bin"
REASON_KEY = "raftchat-reason-code"

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    410: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    return _CODES.get(http_status, grpc.StatusCode.UNKNOWN)


def api_error(http_status: int, body: Any) -> GrpcAbort:
    """The gRPC answer for an HTTP API error answer ``{"msg", "status", "reason"?}``."""
    body = body if isinstance(body, dict) else {}
    message = str(body.get("msg") or _phrase(http_status))
    reason = body.get("reason")
    reason_code = int(reason) if isinstance(reason, int) else 0
    return error(http_status, message, reason_code)


def error(http_status: int, message: str, reason_code: int = 0) -> GrpcAbort:
    code = grpc_code(http_status)
    info = api_pb2.ErrorInfo(reason_code=reason_code, message=message, http_status=http_status)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = api_pb2.Status(code=code.value[0], message=message, details=[detail])
    trailers: list[tuple[str, str | bytes]] = [(DETAILS_KEY, status.SerializeToString())]
    if reason_code:
        trailers.append((REASON_KEY, str(reason_code)))
    return GrpcAbort(code, message, tuple(trailers))


def _phrase(http_status: int) -> str:
    try:
        return HTTPStatus(http_status).phrase.lower()
    except ValueError:
        return f"HTTP {http_status}"
