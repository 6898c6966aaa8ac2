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
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from typing import Any

import grpc
import trio

from cluster.aio_thread import AsyncioThread
from cluster.grpc_client import MAX_MESSAGE_BYTES
from cluster.grpc_service import (
    AUTH_METADATA_KEY,
    SHUTTING_DOWN,
    Authorize,
    GrpcAbort,
    GrpcService,
    Handler,
    HandlerCapture,
    Metadata,
    Notice,
    Received,
    StreamHandler,
    abort_with,
    add_decoding_safely,
    authorized,
    authorized_stream,
    caller_host,
    metadata_value,
    peer_host,
    refuse_undecodable,
    unimplemented,
)
from cluster.listen import ListenError, bind_problem
from cluster.peerauth import (
    REPLY_METADATA_KEY,
    PeerKeys,
    PeerVerifier,
    parse,
    recipient_of,
    sign_reply,
)
from cluster.ratelog import RateLimitedLog
from cluster.stream_calls_server import Unary, calls_method
from cluster.stream_server import InboundStream, stream_method
from cluster.trio_handoff import TrioCall, TrioHandoff, TrioStreamCall

__all__ = [  # what the bridge's users import from it
    "AUTH_METADATA_KEY",
    "Authorize",
    "GrpcAbort",
    "GrpcServer",
    "GrpcService",
    "Handler",
    "Metadata",
    "Notice",
    "StreamHandler",
    "caller_host",
    "peer_host",
]

log = logging.getLogger("raftchat.bridge")

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


class GrpcServer(TrioHandoff):
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
            add_decoding_safely(server, service.add_to_server, servicer, signed)
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
                methods[name] = authorized(methods[name], name, service.authorize)
            for name in service.streams:
                methods[name] = authorized_stream(methods[name], name, service.authorize)
        # RPCs without a handler answer UNIMPLEMENTED, as the generated base methods do, but
        # quietly: those are sync, so grpc.aio runs them in a thread pool and logs a traceback
        # per call (and a peer on a newer version could send such calls all day).
        base = service.servicer_base
        for name, attr in vars(base).items():
            if callable(attr) and not name.startswith("_") and name not in methods:
                methods[name] = unimplemented
        return type(f"Trio{base.__name__}", (base,), methods)()

    def _unary_of(self, service: GrpcService) -> dict[str, Unary]:
        """The service's unary handlers with their request decoders, for its stream of calls."""
        capture = HandlerCapture()
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
            await refuse_undecodable(context, request, name)
            call = TrioCall(name, handler, request, context.time_remaining(), context.peer() or "")
            reply = await self._handle(call, context)
            return self._signed(context, path, reply) if auth else reply

        method.__name__ = method.__qualname__ = name
        return method

    def _stream_method(
        self, name: str, handler: StreamHandler, auth: bool
    ) -> Callable[..., AsyncIterator[Any]]:
        async def method(_servicer: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            request = await self._check_auth(context, auth, name, request)
            await refuse_undecodable(context, request, name)
            call = TrioStreamCall(
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
            await refuse_undecodable(context, request, name)
            if not await self.hand_over(name, notice.handle, request):
                await abort_with(context, SHUTTING_DOWN)
            reply = notice.reply()
            return self._signed(context, path, reply) if auth else reply

        method.__name__ = method.__qualname__ = name
        return method

    def _signed(self, context: Any, path: str, reply: Any) -> bytes:
        """Asyncio thread: ``reply``'s bytes, with their MAC for the call that asked (whose
        credential passed ``_check_auth``) in the trailing metadata, so that nobody between
        the nodes can answer in this node's name."""
        assert self.peer_verifier is not None
        value = metadata_value(context, AUTH_METADATA_KEY)
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
        value = metadata_value(context, AUTH_METADATA_KEY)
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


def _thread_name(what: str) -> str:
    """``grpc-peer`` for "peer gRPC": short enough for the kernel's 15-byte thread names."""
    role = what.split()[0].lower() if what.split() else "server"
    return "grpc" if role == "grpc" else f"grpc-{role}"


async def _release(host: AsyncioThread) -> None:
    thread = host.release()
    if thread is not None:  # the last server of the loop: its thread ends
        await trio.to_thread.run_sync(thread.join)
