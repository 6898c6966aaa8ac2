"""What a gRPC service of a node is made of, and how its methods are registered, checked and
answered (``cluster/bridge.py`` serves them from trio).

A service is its trio handlers, its one-way notices, its inbound streams and who may call it
(``GrpcService``). Its generated registration is captured and done again with decoders that
turn a request that does not decode into INVALID_ARGUMENT (grpc would answer UNKNOWN, as for a
bug), and with signed replies passed on as the bytes that were signed.
"""

from __future__ import annotations

import contextlib
import contextvars
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import trio
from google.protobuf.message import DecodeError

from cluster.peerauth import METADATA_KEY, PeerKeys, body_digest
from cluster.stream_server import InboundStream

AUTH_METADATA_KEY = METADATA_KEY


Handler = Callable[[Any], Awaitable[Any]]
Metadata = Sequence[tuple[str, str | bytes]]
Authorize = Callable[[str, Metadata, str], "GrpcAbort | None"]
"""``authorize(method name, invocation metadata, peer address)``: None or the refusal."""
Emit = Callable[[Any], Awaitable[None]]
StreamHandler = Callable[[Any, Emit], Awaitable[None]]
"""A server-streaming RPC: ``await handler(request, emit)``, calling ``await emit(item)`` per
item; returning ends the stream with OK, raising GrpcAbort ends it with that status."""


@dataclass(frozen=True)
class Notice:
    """A one-way unary RPC: ``handle(request)`` runs on the trio thread (plain function, in
    arrival order) and the caller gets ``reply()`` as soon as the request is handed to trio,
    without a trio task or a trip back to the asyncio thread. For best-effort messages such
    as deliveries, where the answer only says that the node received the request."""

    handle: Callable[[Any], None]
    reply: Callable[[], Any]


_caller: contextvars.ContextVar[str] = contextvars.ContextVar("grpc_caller", default="")


def set_caller(peer: str) -> None:
    """In the trio task of a call: the address it came from, for ``caller_host``."""
    _caller.set(peer)


def caller_host() -> str:
    """In a trio handler: the address the call being served came from (``peer_host``), as the
    server's socket saw it; "" outside a call."""
    return _caller.get()


def peer_host(peer: str) -> str:
    """The address part of grpc's ``context.peer()`` (``ipv4:10.0.0.1:5432`` -> ``10.0.0.1``)."""
    kind, sep, rest = peer.partition(":")
    if sep and kind in ("ipv4", "ipv6"):
        host = urllib.parse.unquote(rest).rpartition(":")[0]  # ipv6:%5B::1%5D:5432 too
        return host.strip("[]") or rest
    return peer


class GrpcAbort(Exception):
    """Raised by a trio handler to answer with a specific gRPC status."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str = "",
        trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.trailing_metadata = trailing_metadata


SHUTTING_DOWN = GrpcAbort(grpc.StatusCode.UNAVAILABLE, "node is shutting down")


@dataclass(frozen=True)
class GrpcService:
    """One gRPC service of a ``GrpcServer``: its trio handlers and who may call it."""

    add_to_server: Callable[[Any, Any], None]
    servicer_base: type
    handlers: Mapping[str, Handler]
    streams: Mapping[str, StreamHandler] = field(default_factory=dict)
    notices: Mapping[str, Notice] = field(default_factory=dict)
    inbound: Mapping[str, InboundStream] = field(default_factory=dict)
    """Long-lived signed streams from peers (``cluster/stream_server.py``)."""
    calls: str = ""
    """The stream method that carries calls of ``handlers`` (``cluster/stream_calls_server.py``)."""
    peer_auth: PeerKeys | None = None
    """Callers must sign their calls with one of these keys (``cluster/peerauth.py``); None:
    anyone may call (or ``authorize`` decides)."""
    authorize: Authorize | None = None
    """A check of each call's metadata, before anything else of the call is looked at: None
    lets it through, a ``GrpcAbort`` is the answer (the public API's bearer token)."""

    def check(self) -> None:
        base = self.servicer_base
        names = [*self.handlers, *self.streams, *self.notices, *self.inbound]
        names += [self.calls] if self.calls else []
        unknown = sorted(n for n in names if not callable(getattr(base, n, None)))
        if unknown:
            raise ValueError(f"{base.__name__} has no RPC named {', '.join(unknown)}")
        if (self.inbound or self.calls) and self.peer_auth is None:
            raise ValueError("inbound streams are only served with the peer credential")

    def full_name(self) -> str:
        """The service's name on the wire (``raftchat.peer.v1.Peer``)."""
        capture = HandlerCapture()
        self.add_to_server(self.servicer_base(), capture)
        (name,) = capture.services
        return name


@dataclass(frozen=True)
class Undecodable:
    """What a request that is not a valid protobuf message of its type deserializes to, so
    that the method answers INVALID_ARGUMENT (grpc would answer UNKNOWN, as for a bug)."""

    error: str


@dataclass(frozen=True)
class Received:
    """A request of a signed service as deserialized: the message (or Undecodable) with the
    method's path and the digest of the bytes that came, which the peer credential covers.
    Protobuf's encoding is not canonical, so the bytes are hashed, not the message again."""

    path: str
    digest: bytes
    message: Any


def decoding_safely(
    deserialize: Callable[[bytes], Any], path: str, signed: bool
) -> Callable[[bytes], Any]:
    def safe(raw: bytes) -> Any:
        try:
            message = deserialize(raw)
        except DecodeError as e:
            message = Undecodable(str(e))
        return Received(path, body_digest(raw), message) if signed else message

    return safe


class HandlerCapture:
    """Stands in for the server while a generated ``add_*Servicer_to_server`` registers its
    method handlers, so that they can be registered again with safe deserializers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        pass  # the same methods come again through add_registered_method_handlers

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
        self.services[name] = handlers


def add_decoding_safely(
    server: Any,
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    signed: bool,
) -> None:
    capture = HandlerCapture()
    add_to_server(servicer, capture)
    for name, handlers in capture.services.items():
        safe: dict[str, Any] = {}
        for method, h in handlers.items():
            deserialize = decoding_safely(h.request_deserializer, f"/{name}/{method}", signed)
            if h.request_streaming:
                # An inbound stream's handler checks and decodes each frame itself; any other
                # client stream answers UNIMPLEMENTED (``unimplemented``).
                if not h.response_streaming:
                    raise ValueError(f"{name}/{method}: client streaming is not bridged")
                safe[method] = grpc.stream_stream_rpc_method_handler(h.stream_stream)
            elif h.response_streaming:
                safe[method] = grpc.unary_stream_rpc_method_handler(
                    h.unary_stream, deserialize, h.response_serializer
                )
            else:
                serialize = h.response_serializer
                if signed:  # a signed reply is handed over as the bytes that were signed
                    serialize = passing_bytes(serialize)
                safe[method] = grpc.unary_unary_rpc_method_handler(
                    h.unary_unary, deserialize, serialize
                )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, safe),))
        server.add_registered_method_handlers(name, safe)


def passing_bytes(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    def either(reply: Any) -> bytes:
        return reply if isinstance(reply, bytes) else serialize(reply)

    return either


async def refuse_undecodable(context: Any, request: Any, name: str) -> None:
    if isinstance(request, Undecodable):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name}: the request does not decode: {request.error}",
        )


async def abort_with(context: Any, error: GrpcAbort) -> None:
    await context.abort(error.code, error.message, trailing_metadata=error.trailing_metadata)


@contextlib.contextmanager
def deadline(remaining: float | None) -> Iterator[None]:
    """The caller's deadline bounds the handler: past it, nobody reads the reply."""
    if remaining is None:
        yield
    else:
        with trio.fail_after(max(remaining, 0.0)):
            yield


async def refuse_unauthorized(context: Any, authorize: Authorize, name: str) -> None:
    refusal = authorize(name, context.invocation_metadata() or (), peer_host(context.peer() or ""))
    if refusal is not None:
        await abort_with(context, refusal)


def authorized(method: Any, name: str, authorize: Authorize) -> Callable[..., Awaitable[Any]]:
    async def checked(servicer: Any, request: Any, context: Any) -> Any:
        await refuse_unauthorized(context, authorize, name)
        return await method(servicer, request, context)

    checked.__name__ = checked.__qualname__ = name
    return checked


def authorized_stream(
    method: Any, name: str, authorize: Authorize
) -> Callable[..., AsyncIterator[Any]]:
    async def checked(servicer: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        await refuse_unauthorized(context, authorize, name)
        async for item in method(servicer, request, context):
            yield item

    checked.__name__ = checked.__qualname__ = name
    return checked


async def unimplemented(_servicer: Any, _request: Any, context: Any) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not served by this node")


def metadata_value(context: Any, key: str) -> Any:
    return next((v for k, v in context.invocation_metadata() or () if k == key), None)
