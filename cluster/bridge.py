"""gRPC between cluster nodes, driven from trio.

grpcio has no trio support, so this module bridges the two (measured in stack-findings §1):

* Server: a ``grpc.aio`` server runs on its own asyncio loop in a dedicated thread. Each RPC is
  handed to a trio task through ``TrioToken.run_sync_soon`` and the reply comes back through
  ``loop.call_soon_threadsafe``. This was the fastest trio server variant measured, and the
  handlers are ordinary trio code that may touch trio-owned state.
* Client: ``cluster/grpc_client.py`` (the sync stub's futures, completed into trio).

One server hosts several services on one port, each with its own authentication: a peer signs
each call with the cluster password (``cluster/peerauth.py``: a MAC over method, recipient,
time, nonce and the request's bytes, which cannot be replayed), and the reply comes back with a
MAC for that call; a service may instead bring its own check of the metadata
(``GrpcService.authorize``: the public API's bearer token, on a server of its own). A call that
fails the check ends alone, UNAUTHENTICATED (the connection and other calls carry on), and is
logged at most once per peer address and ``AUTH_LOG_INTERVAL_S`` (``cluster/ratelog.py``).
Signed bytes are the bytes that travel: the client serializes a request once, signs and sends
those bytes, and the server hashes what it received (grpcio decodes it too, before the check);
a reply likewise goes out as the bytes that were signed and is decoded only once checked.

Server-streaming RPCs are bridged too: the trio handler ``emit``s items, which the asyncio side
yields, with a small window of credits so that a slow client holds back its producer instead of
piling items up in memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import urllib.parse
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

import grpc
import trio
from google.protobuf.message import DecodeError

from cluster.aio_thread import AsyncioThread
from cluster.grpc_client import MAX_MESSAGE_BYTES
from cluster.listen import ListenError, bind_problem
from cluster.peerauth import (
    METADATA_KEY,
    REPLY_METADATA_KEY,
    PeerKeys,
    PeerVerifier,
    body_digest,
    parse,
    recipient_of,
    sign_reply,
)
from cluster.ratelog import RateLimitedLog
from cluster.stream_calls_server import Unary, calls_method
from cluster.stream_server import InboundStream, stream_method

log = logging.getLogger("raftchat.bridge")

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


NOTICE_WINDOW = 256
"""Notices handed to trio and not yet handled before new ones wait for theirs."""

STREAM_WINDOW = 64
"""Items a stream handler may emit ahead of what the client has taken."""

_SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # A second node on the same port must fail to start instead of silently sharing it.
    ("grpc.so_reuseport", 0),
    # Accept our clients' keepalive pings on idle connections instead of answering them with
    # GOAWAY "too_many_pings" (the server default allows one ping per 5 minutes).
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
]


_WILDCARDS = frozenset({"0.0.0.0", "::", ""})

AUTH_LOG_INTERVAL_S = 10.0
"""Calls refused for their peer credential are logged at most once per peer address this
often."""

_caller: contextvars.ContextVar[str] = contextvars.ContextVar("grpc_caller", default="")


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


# ---- server ------------------------------------------------------------------------------


_SHUTTING_DOWN = GrpcAbort(grpc.StatusCode.UNAVAILABLE, "node is shutting down")


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
        capture = _HandlerCapture()
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


def _decoding_safely(
    deserialize: Callable[[bytes], Any], path: str, signed: bool
) -> Callable[[bytes], Any]:
    def safe(raw: bytes) -> Any:
        try:
            message = deserialize(raw)
        except DecodeError as e:
            message = Undecodable(str(e))
        return Received(path, body_digest(raw), message) if signed else message

    return safe


class _HandlerCapture:
    """Stands in for the server while a generated ``add_*Servicer_to_server`` registers its
    method handlers, so that they can be registered again with safe deserializers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        pass  # the same methods come again through add_registered_method_handlers

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
        self.services[name] = handlers


def _add_decoding_safely(
    server: Any,
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    signed: bool,
) -> None:
    capture = _HandlerCapture()
    add_to_server(servicer, capture)
    for name, handlers in capture.services.items():
        safe: dict[str, Any] = {}
        for method, h in handlers.items():
            deserialize = _decoding_safely(h.request_deserializer, f"/{name}/{method}", signed)
            if h.request_streaming:
                # An inbound stream's handler checks and decodes each frame itself; any other
                # client stream answers UNIMPLEMENTED (``_unimplemented``).
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
                    serialize = _passing_bytes(serialize)
                safe[method] = grpc.unary_unary_rpc_method_handler(
                    h.unary_unary, deserialize, serialize
                )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, safe),))
        server.add_registered_method_handlers(name, safe)


def _passing_bytes(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    def either(reply: Any) -> bytes:
        return reply if isinstance(reply, bytes) else serialize(reply)

    return either


async def _refuse_undecodable(context: Any, request: Any, name: str) -> None:
    if isinstance(request, Undecodable):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name}: the request does not decode: {request.error}",
        )


async def _abort(context: Any, error: GrpcAbort) -> None:
    await context.abort(error.code, error.message, trailing_metadata=error.trailing_metadata)


@contextlib.contextmanager
def _deadline(remaining: float | None) -> Iterator[None]:
    """The caller's deadline bounds the handler: past it, nobody reads the reply."""
    if remaining is None:
        yield
    else:
        with trio.fail_after(max(remaining, 0.0)):
            yield


async def _refuse_unauthorized(context: Any, authorize: Authorize, name: str) -> None:
    refusal = authorize(name, context.invocation_metadata() or (), peer_host(context.peer() or ""))
    if refusal is not None:
        await _abort(context, refusal)


def _authorized(method: Any, name: str, authorize: Authorize) -> Callable[..., Awaitable[Any]]:
    async def checked(servicer: Any, request: Any, context: Any) -> Any:
        await _refuse_unauthorized(context, authorize, name)
        return await method(servicer, request, context)

    checked.__name__ = checked.__qualname__ = name
    return checked


def _authorized_stream(
    method: Any, name: str, authorize: Authorize
) -> Callable[..., AsyncIterator[Any]]:
    async def checked(servicer: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        await _refuse_unauthorized(context, authorize, name)
        async for item in method(servicer, request, context):
            yield item

    checked.__name__ = checked.__qualname__ = name
    return checked


async def _unimplemented(_servicer: Any, _request: Any, context: Any) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not served by this node")


class _Call:
    """One RPC on its way from the asyncio thread to a trio task and back."""

    def __init__(
        self, name: str, handler: Any, request: Any, remaining: float | None, peer: str = ""
    ) -> None:
        self.name, self.handler, self.request, self.remaining = name, handler, request, remaining
        self.peer = peer_host(peer)
        self.loop = asyncio.get_running_loop()
        # (reply, None) or (None, the error to answer).
        self.answer: asyncio.Future[tuple[Any, GrpcAbort | None]] = self.loop.create_future()
        self.scope = trio.CancelScope()  # only entered and cancelled on the trio thread

    def reply(self, value: Any, error: GrpcAbort | None) -> None:
        """Trio thread: resolve the asyncio side's future."""

        def set_once() -> None:
            if not self.answer.done():  # cancelled when the RPC went away first
                self.answer.set_result((value, error))

        # A closed loop means the aio server is gone and nobody waits for this answer.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(set_once)


class _StreamedCall(_Call):
    """A call that came over a stream of calls: its answer goes to ``on_answer`` on the
    asyncio thread, which writes it to the stream."""

    def __init__(
        self,
        name: str,
        handler: Any,
        request: Any,
        remaining: float | None,
        peer: str,
        on_answer: Callable[[Any, GrpcAbort | None], None],
    ) -> None:
        super().__init__(name, handler, request, remaining, peer)
        self._on_answer = on_answer

    def reply(self, value: Any, error: GrpcAbort | None) -> None:
        with contextlib.suppress(RuntimeError):  # the aio loop is gone: nobody listens
            self.loop.call_soon_threadsafe(self._on_answer, value, error)


class _StreamCall(_Call):
    """A server-streaming RPC: items go through an asyncio queue, credits are trio's."""

    def __init__(
        self, name: str, handler: Any, request: Any, remaining: float | None, peer: str = ""
    ) -> None:
        super().__init__(name, handler, request, remaining, peer)
        # ("item", item), then one ("end", None) or ("error", GrpcAbort).
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.credits: trio.Semaphore | None = None  # made on the trio thread

    def put(self, kind: str, value: Any) -> None:
        """Trio thread."""
        with contextlib.suppress(RuntimeError):  # the aio loop is gone: nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def reply(self, value: Any, error: GrpcAbort | None) -> None:
        if error is None:
            self.put("end", None)
        else:
            self.put("error", error)

    def release(self) -> None:
        """Trio thread: the client took an item."""
        if self.credits is not None:
            self.credits.release()


class GrpcServer:
    def __init__(
        self,
        bind: str,
        peer_auth: PeerKeys | None,
        add_to_server: Callable[[Any, Any], None] | None,
        servicer_base: type,
        handlers: Mapping[str, Handler],
        *,
        grace_s: float = 2.0,
        extra_services: Sequence[GrpcService] = (),
        notices: Mapping[str, Notice] | None = None,
        inbound: Mapping[str, InboundStream] | None = None,
        calls: str = "",
        what: str = "gRPC",
        credentials: grpc.ServerCredentials | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        loop_thread: AsyncioThread | None = None,
    ) -> None:
        main = (
            []
            if add_to_server is None  # of_services: only the services given
            else [
                GrpcService(
                    add_to_server,
                    servicer_base,
                    handlers,
                    notices=notices or {},
                    inbound=inbound or {},
                    calls=calls,
                    peer_auth=peer_auth,
                )
            ]
        )
        self._services = [*main, *extra_services]
        for service in self._services:
            service.check()
            if service.peer_auth not in (None, peer_auth):
                raise ValueError("every signed service of a server has the server's peer keys")
        # A call must name this server's host as its recipient (cluster/peerauth.py), unless
        # it listens on the wildcard address and cannot tell which of its hosts was dialled.
        host = recipient_of(bind)
        names = () if host in _WILDCARDS else (host,)
        self.peer_verifier = PeerVerifier(peer_auth, names=names) if peer_auth is not None else None
        """One nonce memory for the whole port (replaceable before ``serving``, for tests)."""
        self.bind = bind
        self.what = what
        """What the listener is, for a bind failure's message."""
        self._credentials = credentials
        """TLS (``cluster/grpc_tls.py``); None: plain TCP."""
        self._loop_thread = loop_thread
        """The asyncio thread shared with the process's other servers; None: one of its own."""
        # grpcio reads and decodes a whole request before any check of ours runs, so this caps
        # what a caller without a credential can make the server buffer per call.
        self._options = [
            *_SERVER_OPTIONS,
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self.port = 0  # the bound port once serving() has started (resolves ":0")
        self._grace_s = grace_s
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._notices_sent = 0
        self._notices_done = 0
        self._nursery: trio.Nursery | None = None
        # Calls refused for their credential: a line per peer address per interval, since every
        # refused call costs the caller one request (asyncio thread only).
        self.auth_refusals = RateLimitedLog(log, AUTH_LOG_INTERVAL_S)
        self.inbound_tasks: set[asyncio.Task[Any]] = set()
        """Handlers of open inbound streams (asyncio thread only)."""

    @classmethod
    def of_services(
        cls,
        bind: str,
        services: Sequence[GrpcService],
        *,
        what: str,
        grace_s: float = 2.0,
        credentials: grpc.ServerCredentials | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        loop_thread: AsyncioThread | None = None,
    ) -> GrpcServer:
        """A server of ``services`` only, each with its own authentication (TLS with
        ``credentials``), taking requests of at most ``max_message_bytes``."""
        return cls(
            bind,
            None,
            None,
            object,
            {},
            extra_services=services,
            grace_s=grace_s,
            what=what,
            credentials=credentials,
            max_message_bytes=max_message_bytes,
            loop_thread=loop_thread,
        )

    @property
    def address(self) -> str:
        return f"{self.bind.rsplit(':', 1)[0]}:{self.port}"

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[GrpcServer]:
        """Serve until the block is left. Raises ListenError (an OSError) if the address cannot
        be bound."""
        self._trio_token = trio.lowlevel.current_trio_token()
        ready: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event, int]]
        ready = concurrent.futures.Future()
        host = self._loop_thread or AsyncioThread(_thread_name(self.what))
        # Errors are re-raised outside the nursery so that callers see the plain exception
        # (OSError on bind failure), not an ExceptionGroup.
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            # Handlers run in this nursery, so it exists before the aio server accepts calls.
            self._nursery = nursery
            served = asyncio.run_coroutine_threadsafe(self._serve_reporting(ready), host.acquire())
            try:
                # Shielded: binding takes milliseconds, and a cancel arriving meanwhile would
                # leave a started server (and the shared loop) behind; it is seen right after.
                with trio.CancelScope(shield=True):
                    loop, stop, self.port = await trio.to_thread.run_sync(ready.result)
            except Exception as e:
                error = e
                with trio.CancelScope(shield=True):
                    try:
                        await trio.to_thread.run_sync(concurrent.futures.wait, [served])
                    finally:
                        await _release(host)
            else:
                try:
                    await trio.lowlevel.checkpoint()  # a cancel that came while binding
                    yield self
                except Exception as e:
                    error = e
                finally:
                    # Shielded: the loop must be released even when leaving because of a cancel.
                    with trio.CancelScope(shield=True):
                        try:
                            await self._stop(loop, stop, served, nursery)
                        finally:
                            await _release(host)
        if error is not None:
            raise error

    async def _stop(
        self,
        loop: asyncio.AbstractEventLoop,
        stop: asyncio.Event,
        served: concurrent.futures.Future[None],
        nursery: trio.Nursery,
    ) -> None:
        # The aio server stops taking calls, and in-flight handlers get the grace to finish:
        # trio must keep running meanwhile, since only trio can answer them.
        loop.call_soon_threadsafe(stop.set)
        with trio.move_on_after(self._grace_s):
            await trio.to_thread.run_sync(concurrent.futures.wait, [served], abandon_on_cancel=True)
        # Handlers still running answer UNAVAILABLE (retryable) when cancelled here, before the
        # aio server's own, longer grace runs out: that would cancel the RPCs on the asyncio
        # side instead, which grpc logs as an error per call.
        nursery.cancel_scope.cancel()
        await trio.to_thread.run_sync(concurrent.futures.wait, [served])

    async def _serve_reporting(self, ready: concurrent.futures.Future[Any]) -> None:
        try:
            await self._serve(ready)
        except BaseException as e:
            if ready.done():
                log.exception("gRPC server %s failed", self.bind)
            else:
                ready.set_exception(e)

    async def _serve(self, ready: concurrent.futures.Future[Any]) -> None:
        server = grpc.aio.server(options=self._options)
        for service in self._services:
            signed = service.peer_auth is not None
            servicer = self._make_servicer(service)
            _add_decoding_safely(server, service.add_to_server, servicer, signed)
        # Asked first, because grpcio's own failure says only "Failed to bind" and prints the
        # reason from its C core straight to stderr.
        problem = bind_problem(self.bind)
        if problem is not None:
            raise ListenError(self.what, self.bind, problem)
        try:
            if self._credentials is None:
                port = server.add_insecure_port(self.bind)
            else:
                port = server.add_secure_port(self.bind, self._credentials)
        except RuntimeError as e:  # taken in between
            raise ListenError(self.what, self.bind, str(e)) from None
        await server.start()
        stop = asyncio.Event()
        ready.set_result((asyncio.get_running_loop(), stop, port))
        await stop.wait()
        # Streams from peers last as long as their sender wants: they end now (the senders
        # open new ones elsewhere or once this node is back), or they would hold the stop
        # for its whole grace.
        for task in list(self.inbound_tasks):
            task.cancel()
        # Only a fallback: _stop cancels the trio handlers once self._grace_s has passed.
        await server.stop(self._grace_s + 2.0)

    def _make_servicer(self, service: GrpcService) -> Any:
        auth = service.peer_auth is not None
        methods: dict[str, Callable[..., Any]] = {}
        for name, handler in service.handlers.items():
            methods[name] = self._unary_method(name, handler, auth)
        for name, stream in service.streams.items():
            methods[name] = self._stream_method(name, stream, auth)
        for name, notice in service.notices.items():
            methods[name] = self._notice_method(name, notice, auth)
        if service.inbound or service.calls:
            path = f"/{service.full_name()}/"
            for name, inbound in service.inbound.items():
                methods[name] = stream_method(self, path + name, name, inbound)
            if service.calls:
                methods[service.calls] = calls_method(
                    self, path + service.calls, service.calls, self._unary_of(service)
                )
        if service.authorize is not None:
            for name in [*service.handlers, *service.notices]:
                methods[name] = _authorized(methods[name], name, service.authorize)
            for name in service.streams:
                methods[name] = _authorized_stream(methods[name], name, service.authorize)
        # RPCs without a handler answer UNIMPLEMENTED, as the generated base methods do, but
        # quietly: those are sync, so grpc.aio runs them in a thread pool and logs a traceback
        # per call (and a peer on a newer version could send such calls all day).
        base = service.servicer_base
        for name, attr in vars(base).items():
            if callable(attr) and not name.startswith("_") and name not in methods:
                methods[name] = _unimplemented
        return type(f"Trio{base.__name__}", (base,), methods)()

    def _unary_of(self, service: GrpcService) -> dict[str, Unary]:
        """The service's unary handlers with their request decoders, for its stream of calls."""
        capture = _HandlerCapture()
        service.add_to_server(service.servicer_base(), capture)
        (methods,) = capture.services.values()
        return {
            name: Unary(handler, methods[name].request_deserializer)
            for name, handler in service.handlers.items()
        }

    def _unary_method(
        self, name: str, handler: Handler, auth: bool
    ) -> Callable[..., Awaitable[Any]]:
        async def method(_servicer: Any, request: Any, context: Any) -> Any:
            path = request.path if auth else ""
            request = await self._check_auth(context, auth, name, request)
            await _refuse_undecodable(context, request, name)
            call = _Call(name, handler, request, context.time_remaining(), context.peer() or "")
            reply = await self._handle(call, context)
            return self._signed(context, path, reply) if auth else reply

        method.__name__ = method.__qualname__ = name
        return method

    def _stream_method(
        self, name: str, handler: StreamHandler, auth: bool
    ) -> Callable[..., AsyncIterator[Any]]:
        async def method(_servicer: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            request = await self._check_auth(context, auth, name, request)
            await _refuse_undecodable(context, request, name)
            call = _StreamCall(
                name, handler, request, context.time_remaining(), context.peer() or ""
            )
            async for item in self._handle_stream(call, context):
                yield item

        method.__name__ = method.__qualname__ = name
        return method

    def _notice_method(
        self, name: str, notice: Notice, auth: bool
    ) -> Callable[..., Awaitable[Any]]:
        async def method(_servicer: Any, request: Any, context: Any) -> Any:
            path = request.path if auth else ""
            request = await self._check_auth(context, auth, name, request)
            await _refuse_undecodable(context, request, name)
            if not await self.hand_over(name, notice.handle, request):
                await _abort(context, _SHUTTING_DOWN)
            reply = notice.reply()
            return self._signed(context, path, reply) if auth else reply

        method.__name__ = method.__qualname__ = name
        return method

    async def hand_over(self, name: str, handle: Callable[[Any], None], request: Any) -> bool:
        """Asyncio thread: ``handle(request)`` on the trio thread, in arrival order; False when
        trio is gone. Returns at once while trio keeps up; once NOTICE_WINDOW requests wait for
        it, only when this one is handled too, so that a busy node slows its senders down
        instead of queueing without bound."""
        queued, handled = self.queue_for_trio(name, handle, request)
        if handled is not None:
            await handled
        return queued

    def queue_for_trio(
        self, name: str, handle: Callable[[Any], None], request: Any
    ) -> tuple[bool, asyncio.Future[None] | None]:
        """``hand_over`` in two steps: whether the request is queued for trio (it will be
        handled), and a future to await before taking the next one when trio is behind."""
        assert self._trio_token is not None
        handled: asyncio.Future[None] | None = None
        if self._notices_sent - self._notices_done >= NOTICE_WINDOW:
            handled = asyncio.get_running_loop().create_future()
        try:
            self._trio_token.run_sync_soon(self._run_notice, name, handle, request, handled)
        except trio.RunFinishedError:
            return False, None
        self._notices_sent += 1  # asyncio thread only; _notices_done is trio's
        return True, handled

    @property
    def grace_s(self) -> float:
        """How long a stopping server lets calls in flight finish."""
        return self._grace_s

    def _run_notice(
        self,
        name: str,
        handle: Callable[[Any], None],
        request: Any,
        handled: asyncio.Future[None] | None,
    ) -> None:
        """Trio thread. An exception must not escape: ``run_sync_soon`` would end the run."""
        try:
            handle(request)
        except Exception:
            log.exception("RPC %s failed", name)
        finally:
            self._notices_done += 1
            if handled is not None:
                with contextlib.suppress(RuntimeError):  # the aio loop is gone
                    handled.get_loop().call_soon_threadsafe(_resolve, handled)

    def _signed(self, context: Any, path: str, reply: Any) -> bytes:
        """Asyncio thread: ``reply``'s bytes, with their MAC for the call that asked (whose
        credential passed ``_check_auth``) in the trailing metadata, so that nobody between
        the nodes can answer in this node's name."""
        assert self.peer_verifier is not None
        value = _metadata_value(context, AUTH_METADATA_KEY)
        cred = parse(value) if isinstance(value, str) else None
        assert cred is not None  # checked before the handler ran
        raw: bytes = reply.SerializeToString()
        tag = sign_reply(self.peer_verifier.keys, path, cred.nonce_hex, raw)
        context.set_trailing_metadata(((REPLY_METADATA_KEY, tag),))
        return raw

    async def _check_auth(self, context: Any, auth: bool, name: str, request: Any) -> Any:
        """The request, once its call has passed the peer credential check of a signed
        service; refuses the call (only it: the connection stays) otherwise."""
        if not auth:
            return request
        assert isinstance(request, Received) and self.peer_verifier is not None
        value = _metadata_value(context, AUTH_METADATA_KEY)
        problem = self.peer_verifier.verify(request.path, value, request.digest)
        if problem is None:
            self.auth_refusals.flush()  # counts of refusals whose interval is over
            return request.message
        self.log_refusal(context, name, problem)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid peer credential")

    def log_refusal(self, context: Any, name: str, problem: str) -> None:
        """Asyncio thread: a call refused for its credential, logged at most once per peer
        address and interval."""
        host = peer_host(context.peer() or "")
        self.auth_refusals.warning(
            host, f"peer gRPC: refused {name} from {host}: {problem}", peer=host
        )

    def start_call(
        self,
        name: str,
        handler: Handler,
        request: Any,
        remaining: float | None,
        peer: str,
        on_answer: Callable[[Any, GrpcAbort | None], None],
    ) -> Any:
        """Asyncio thread: run ``handler(request)`` as a trio task under the deadline, then
        ``on_answer(reply, None)`` or ``on_answer(None, error)`` back on this thread. Returns
        the call (for ``cancel_call``), or None when trio is gone."""
        call = _StreamedCall(name, handler, request, remaining, peer, on_answer)
        return call if self._start(call, self._run) else None

    def cancel_call(self, call: Any) -> None:
        """Asyncio thread: nobody wants ``start_call``'s answer any more."""
        self._cancel(call)

    def _start(self, call: _Call, run: Callable[[_Call], Awaitable[None]]) -> bool:
        """Asyncio thread: start ``run(call)`` in trio; False when trio is gone."""
        assert self._trio_token is not None
        try:
            self._trio_token.run_sync_soon(self._spawn, call, run)
        except trio.RunFinishedError:
            return False
        return True

    def _cancel(self, call: _Call) -> None:
        """Asyncio thread: the client cancelled or its deadline passed, so nobody wants the
        answer any more: stop the trio handler as well."""
        assert self._trio_token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._trio_token.run_sync_soon(call.scope.cancel)

    async def _handle(self, call: _Call, context: Any) -> Any:
        """Asyncio thread: hand the call to trio and wait for its answer."""
        if not self._start(call, self._run):
            await _abort(context, _SHUTTING_DOWN)
        try:
            value, error = await call.answer
        except asyncio.CancelledError:
            self._cancel(call)
            raise
        if error is not None:
            await _abort(context, error)
        return value

    async def _handle_stream(self, call: _StreamCall, context: Any) -> AsyncIterator[Any]:
        """Asyncio thread: yield what the trio handler emits, until it ends."""
        if not self._start(call, self._run_stream):
            await _abort(context, _SHUTTING_DOWN)
        finished = False
        try:
            while True:
                kind, value = await call.queue.get()
                if kind == "item":
                    yield value
                    assert self._trio_token is not None
                    with contextlib.suppress(trio.RunFinishedError):
                        self._trio_token.run_sync_soon(call.release)
                    continue
                finished = True
                if kind == "error":
                    await _abort(context, value)
                return
        finally:
            if not finished:
                self._cancel(call)

    def _spawn(self, call: _Call, run: Callable[[_Call], Awaitable[None]]) -> None:
        """Trio thread."""
        try:
            assert self._nursery is not None
            self._nursery.start_soon(run, call)
        except RuntimeError:  # the nursery is closed: serving() has ended
            call.reply(None, _SHUTTING_DOWN)

    async def _run(self, call: _Call) -> None:
        async def body() -> Any:
            return await call.handler(call.request)

        await self._guarded(call, body)

    async def _run_stream(self, call: _Call) -> None:
        assert isinstance(call, _StreamCall)
        credits = call.credits = trio.Semaphore(STREAM_WINDOW)

        async def emit(item: Any) -> None:
            await credits.acquire()
            call.put("item", item)

        async def body() -> None:
            await call.handler(call.request, emit)

        await self._guarded(call, body)

    async def _guarded(self, call: _Call, body: Callable[[], Awaitable[Any]]) -> None:
        """Trio thread: run a handler under the call's deadline and answer how it ended."""
        value: Any = None
        error: GrpcAbort | None = _SHUTTING_DOWN  # if cancelled from outside (server stopping)
        _caller.set(call.peer)  # this task's own context: seen by the handler (caller_host)
        try:
            with call.scope, _deadline(call.remaining):
                value, error = await body(), None
        except GrpcAbort as e:
            error = e
        except trio.TooSlowError:
            error = GrpcAbort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{call.name}: deadline exceeded")
        except Exception as e:
            log.exception("RPC %s failed", call.name)
            error = GrpcAbort(grpc.StatusCode.INTERNAL, str(e) or type(e).__name__)
        finally:
            call.reply(value, error)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled when the RPC went away first
        future.set_result(None)


def _metadata_value(context: Any, key: str) -> Any:
    return next((v for k, v in context.invocation_metadata() or () if k == key), None)


def _thread_name(what: str) -> str:
    """``grpc-peer`` for "peer gRPC": short enough for the kernel's 15-byte thread names."""
    role = what.split()[0].lower() if what.split() else "server"
    return "grpc" if role == "grpc" else f"grpc-{role}"


async def _release(host: AsyncioThread) -> None:
    thread = host.release()
    if thread is not None:  # the last server of the loop: its thread ends
        await trio.to_thread.run_sync(thread.join)
