"""The gateway's listeners: WKProto over TCP, and WKProto or JSON-RPC over WebSocket (plain,
and over TLS when the node has a certificate), each connection contained.

Three rules hold for every accepted connection:

* **Contained.** A connection's failure ends that connection only. trio's ``serve_tcp`` lets a
  handler's exception end the whole listener (and with it the node), so each handler runs
  inside a boundary that logs the failure, rate-limited, and closes the socket. Known bad
  input never gets that far (the session answers it with a reason code); the boundary is for
  what nobody foresaw, and its log line says so.
* **Counted.** At most ``gateway.max_connections`` at once, over every transport. Beyond, a
  new connection is closed right after the accept, before it costs a task, a read buffer or a
  TLS handshake.
* **Bounded.** The TLS handshake and the WebSocket upgrade together must finish within
  ``gateway.auth_timeout_s``, as the CONNECT must after them. A failed handshake (plain bytes,
  a client that does not trust the certificate) ends that connection, with a log line at most
  once per client address and interval.
"""

from __future__ import annotations

import logging
import resource
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from cluster.listen import start_listener
from cluster.ratelog import RateLimitedLog
from proto.wkproto import MAX_REMAINING_LENGTH

from ..log import get_logger
from .session import GatewayContext, Session
from .transport import TcpTransport, WsTransport, peer_of
from .websocket import HandshakeFailed, WsConnection

log = get_logger("gateway")
_ratelog = RateLimitedLog(logging.getLogger("raftchat.gateway"))

FD_RESERVE = 1024
"""Open files kept back from client connections (HTTP, Raft and gRPC sockets, RocksDB files)
when ``gateway.max_connections`` is 0."""

WS_MAX_MESSAGE = MAX_REMAINING_LENGTH + 16
"""The largest WKProto frame the codec accepts, plus its header; the same bound holds for one
JSON-RPC message."""


def raise_open_file_limit() -> int:
    """Lift this process's soft limit on open files to the hard limit; the new soft limit.
    Every connection is a file, and distributions often set the soft limit at 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit", soft=soft, hard=hard, error=str(e))
    return soft


def connection_capacity(configured: int, open_files: int) -> int:
    """How many client connections the node accepts at once."""
    room = max(open_files - FD_RESERVE, 1)
    return room if configured <= 0 else min(configured, room)


class Gateway:
    """Serves WKProto on TCP and WebSocket for one node."""

    def __init__(self, ctx: GatewayContext, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ctx = ctx
        self._ssl = ssl_context
        """With it, WSS on ``gateway.wss_port`` too."""
        gw = ctx.config.gateway
        self.capacity = connection_capacity(gw.max_connections, raise_open_file_limit())
        if gw.max_connections > self.capacity:
            log.warning(
                "gateway.max_connections is above what the open-file limit allows",
                configured=gw.max_connections,
                capacity=self.capacity,
            )
        self.open = 0
        self.refused = 0
        self.accepting = True
        self._accepting: list[trio.CancelScope] = []

    async def serve(self, nursery: trio.Nursery, host: str) -> None:
        """Start both listeners (returns once they listen; raises ListenError, naming the
        listener and its address, if one cannot bind)."""
        gw = self._ctx.config.gateway
        tcp = partial(self._contained, "tcp", self._on_tcp)
        ws = partial(self._contained, "ws", self._on_ws)
        tcp_serve = partial(self._listen, nursery, tcp, gw.tcp_port, host)
        await start_listener(nursery, "WKProto TCP", host, gw.tcp_port, tcp_serve)
        ws_serve = partial(self._listen, nursery, ws, gw.ws_port, host)
        await start_listener(nursery, "WKProto WebSocket", host, gw.ws_port, ws_serve)
        if self._ssl is not None:
            wss = partial(self._contained, "wss", self._on_wss)
            wss_serve = partial(self._listen, nursery, wss, gw.wss_port, host)
            await start_listener(
                nursery, "WKProto WebSocket over TLS", host, gw.wss_port, wss_serve
            )
        nursery.start_soon(self._flush_log)

    async def _listen(
        self,
        handlers: trio.Nursery,
        handler: Callable[[trio.SocketStream], Awaitable[None]],
        port: int,
        host: str,
        *,
        task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """``trio.serve_tcp``, except that the connections live in ``handlers`` (the node's
        nursery): ``stop_accepting`` closes the listening socket and leaves them open."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        with trio.CancelScope() as accepting:
            self._accepting.append(accepting)
            await trio.serve_listeners(
                handler, listeners, handler_nursery=handlers, task_status=task_status
            )

    def stop_accepting(self) -> None:
        """Close every listener (a new connection is refused by the operating system);
        the sessions already open go on."""
        self.accepting = False
        for scope in self._accepting:
            scope.cancel()

    @staticmethod
    async def _flush_log() -> None:
        """Write the counts of held-back lines once their interval is over."""
        while True:
            await trio.sleep(_ratelog.interval_s)
            _ratelog.flush()

    async def _contained(
        self,
        kind: str,
        handler: Callable[[trio.SocketStream], Awaitable[None]],
        stream: trio.SocketStream,
    ) -> None:
        peer = peer_of(stream)
        if self.open >= self.capacity:
            self.refused += 1
            _ratelog.warning(
                f"full/{kind}",
                "connection refused: the node is at gateway.max_connections",
                transport=kind,
                capacity=self.capacity,
                peer=peer,
            )
            await trio.aclose_forcefully(stream)
            return
        self.open += 1
        try:
            await handler(stream)
        except Exception as e:
            # Not bad input (the session answers that with a reason code): a fault of ours,
            # which must cost this connection only.
            _ratelog.warning(
                f"failed/{kind}/{type(e).__name__}",
                "connection failed unexpectedly; closed",
                transport=kind,
                peer=peer,
                error=repr(e),
            )
        finally:
            self.open -= 1
            await trio.aclose_forcefully(stream)

    async def _on_tcp(self, stream: trio.SocketStream) -> None:
        await Session(self._ctx, TcpTransport(stream)).run()

    async def _on_ws(self, stream: trio.SocketStream) -> None:
        await self._websocket(stream, stream, "ws")

    async def _on_wss(self, stream: trio.SocketStream) -> None:
        assert self._ssl is not None
        tls = trio.SSLStream(stream, self._ssl, server_side=True, https_compatible=True)
        await self._websocket(stream, tls, "wss")

    async def _websocket(self, tcp: trio.SocketStream, stream: trio.abc.Stream, kind: str) -> None:
        """The TLS handshake (over ``wss``) and the upgrade, within the auth timeout; then the
        session."""
        peer = peer_of(tcp)
        ws = WsConnection(stream, WS_MAX_MESSAGE)
        with trio.move_on_after(self._ctx.config.gateway.auth_timeout_s) as upgrade:
            if isinstance(stream, trio.SSLStream):
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as e:
                    _ratelog.info(
                        ("tls", peer.rpartition(":")[0]),
                        "TLS handshake failed; connection closed",
                        transport=kind,
                        peer=peer,
                        error=str(e.__cause__ or e)[:200],
                    )
                    return
            try:
                await ws.accept()
            except HandshakeFailed as e:
                log.debug("WebSocket upgrade failed", peer=peer, error=str(e))
                return
        if upgrade.cancelled_caught:
            log.debug("TLS handshake or WebSocket upgrade timed out", transport=kind, peer=peer)
            return
        await Session(self._ctx, WsTransport(ws, peer, kind)).run()
