"""The HTTP API's listener: a small HTTP/1.1 server on trio and h11, with keep-alive and the
limits that hold against hostile clients.

The API is plain JSON over POST/GET, so a full framework would add dependencies and CPU for
nothing; h11 gives a correct, sans-IO HTTP parser (ADR 001 measures Hypercorn against it).
Every client may be hostile (``docs/security.md``): connections are capped per address and in
total, every phase of a request has a deadline, a body is bounded in bytes (and in JSON nesting,
``server.Request``), and whatever goes wrong with one connection ends that connection only,
logged at most once per client and interval.
"""

from __future__ import annotations

import logging
import re
import ssl
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from cluster.ratelog import RateLimitedLog

from ..config_sections import HttpSection
from .admission import Admission, client_key
from .server import LOG_INTERVAL_S, LOGGER, Request, Response, Router

LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024
"""After an error answer the server half-closes and drops what the client still sends, for up
to this long and this much: closing a socket with unread input makes the kernel send a reset,
which can destroy the answer before the client has read it."""
_RECEIVE_BYTES = 65536
_LOGGED_CHARS = 200
_PHRASES = {int(status): status.phrase.encode() for status in HTTPStatus}


class _Refusal(Exception):
    """The request is answered ``status`` with ``msg`` and the connection closed."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


class HttpServer:
    """Serves one ``Router`` on any number of listeners, with the limits of ``settings``
    (connection caps are shared by the listeners)."""

    def __init__(
        self, router: Router, settings: HttpSection, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._router = router
        self._cfg = settings
        self._ssl = ssl_context
        """With it, every connection is HTTPS."""
        self.admission = Admission(settings.max_connections, settings.max_connections_per_address)
        self._refusing = 0
        self._in_flight: set[trio.Event] = set()
        """One event per request being handled, set once it is answered."""
        self._timeouts = {
            "idle": settings.keep_alive_timeout_s,
            "head": settings.head_timeout_s,
            "body": settings.body_timeout_s,
        }
        # Refusals, troubles (a slow reader, a bad request) and failures (our bugs) each have
        # their own budget of lines, so that one kind cannot silence another.
        self._refusals = RateLimitedLog(logging.getLogger(LOGGER), LOG_INTERVAL_S)
        self._troubles = RateLimitedLog(logging.getLogger(LOGGER), LOG_INTERVAL_S)
        self._failures = RateLimitedLog(logging.getLogger(LOGGER), LOG_INTERVAL_S)
        self._tls_failures = RateLimitedLog(logging.getLogger(LOGGER), LOG_INTERVAL_S)

    async def answered(self) -> None:
        """Wait until every request being handled now has been answered (not those that
        arrive meanwhile: the API keeps serving)."""
        for done in list(self._in_flight):
            await done.wait()

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await trio.serve_tcp(self._handle, port, host=host, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            address = str(stream.socket.getpeername()[0])
        except OSError:
            address = "?"  # gone before it was served
        if self._ssl is None:
            await self.handle_connection(stream, address)
            return
        # The handshake runs on the first read or write: after the caps have counted the
        # connection, and under the first request's head deadline (ADR 001).
        tls = trio.SSLStream(stream, self._ssl, server_side=True, https_compatible=True)
        await self.handle_connection(tls, address)

    async def handle_connection(self, stream: trio.abc.Stream, address: str) -> None:
        """Serve one connection from ``address`` (a TCP or a TLS stream) and close it."""
        key = client_key(address)
        refusal = self.admission.admit(key)
        try:
            if refusal is not None:
                self._refusals.warning(
                    ("refused", key), "HTTP connection refused", client=address, why=refusal
                )
                await self._refuse(stream, refusal)
                return
            try:
                await self._serve(stream, key, address)
            finally:
                self.admission.release(key)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            # The client went away: nothing to answer. A TLS failure (a failed handshake:
            # plain HTTP, a client that does not trust the certificate) is worth a line.
            if isinstance(e.__cause__, ssl.SSLError):
                self._tls_failures.info(
                    ("tls", key),
                    "HTTPS connection failed: TLS error",
                    client=address,
                    why=str(e.__cause__)[:_LOGGED_CHARS],
                )
        except Exception:
            # A server bug met on this connection: it ends here, the others go on.
            self._failures.exception(("failed", key), "HTTP connection failed", client=address)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _serve(self, stream: trio.abc.Stream, key: str, address: str) -> None:
        cfg = self._cfg
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=cfg.max_head_bytes)
        first = True
        try:
            while True:
                request = await self._read_request(conn, stream, first, address)
                if request is None:
                    return
                first = False
                done = trio.Event()
                self._in_flight.add(done)
                try:
                    resp = await self._router.dispatch(request)
                    with trio.move_on_after(cfg.send_timeout_s) as sending:
                        # A HEAD answer is the GET answer's head: h11 refuses a body after it.
                        await self._write(conn, stream, resp, head_only=request.method == "HEAD")
                finally:
                    self._in_flight.discard(done)
                    done.set()
                if sending.cancelled_caught:
                    self._troubles.info(
                        ("slow reader", key),
                        f"HTTP client did not take its answer within {cfg.send_timeout_s} s; "
                        "disconnected",
                        client=address,
                    )
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as e:
            refusal = (
                _head_too_large(cfg.max_head_bytes)
                if e.error_status_hint == 431
                else _Refusal(e.error_status_hint, f"bad HTTP request: {e}")
            )
            await self._answer_and_close(conn, stream, key, address, refusal)
        except _Refusal as r:
            await self._answer_and_close(conn, stream, key, address, r)

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream, first: bool, address: str
    ) -> Request | None:
        """The next request, or None when the client closed or idled out between requests.

        A keep-alive connection may idle for ``keep_alive_timeout_s``; the head must then arrive
        within ``head_timeout_s`` of its first byte (of the opening, for a connection's first
        request), and the body within ``body_timeout_s`` after the head. One cancel scope
        covers the phases, and a phase's deadline is set only when the server has to wait in
        it: most requests arrive whole in one read, and every deadline costs CPU per request.
        """
        cfg = self._cfg
        limit = cfg.max_body_bytes
        timeouts = self._timeouts
        phase = "head" if first else "idle"
        head: h11.Request | None = None
        body = bytearray()
        with trio.CancelScope(deadline=trio.current_time() + timeouts[phase]) as reading:
            waiting_in = phase
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if phase == "idle" and conn.trailing_data[0]:
                        phase = "head"  # part of a pipelined request came with the last one
                    if waiting_in != phase:
                        if phase == "body":
                            assert head is not None
                            _check_declared_length(head, limit)
                        reading.deadline = trio.current_time() + timeouts[phase]
                        waiting_in = phase
                    data = await stream.receive_some(_RECEIVE_BYTES)
                    conn.receive_data(bytes(data))
                    if phase == "idle":
                        # The head's deadline runs from this first byte: set at the next wait,
                        # which comes with no other wait in between.
                        phase = "head"
                elif isinstance(event, h11.Request):
                    _check_head_size(event, cfg.max_head_bytes)
                    head, phase = event, "body"
                    if conn.they_are_waiting_for_100_continue:
                        _check_declared_length(head, limit)
                        reading.deadline = trio.current_time() + timeouts[phase]
                        waiting_in = phase
                        go_on = h11.InformationalResponse(status_code=100, headers=[])
                        await stream.send_all(conn.send(go_on) or b"")
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        raise _Refusal(413, f"body exceeds {limit} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    return self._request(head, bytes(body), address)
                elif head is None:
                    return None  # ConnectionClosed between requests
                else:
                    raise trio.BrokenResourceError("client closed mid-request")
        if phase == "idle":
            return None  # closed without an answer: there is no request to answer
        raise _Refusal(408, f"request {phase} not complete within {timeouts[phase]} s")

    def _request(self, head: h11.Request, body: bytes, address: str) -> Request:
        parts = urlsplit(head.target.decode("latin-1"))
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}
        return Request(
            head.method.decode("latin-1"),
            parts.path,
            query,
            headers,
            body,
            max_json_depth=self._cfg.max_json_depth,
            client=address,
        )

    async def _answer_and_close(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        key: str,
        address: str,
        refusal: _Refusal,
    ) -> None:
        """Answer a request the server will not serve, then close (the caller does)."""
        self._troubles.info(
            (refusal.status, key),
            "HTTP request refused",
            client=address,
            why=_unquoted(refusal.msg)[:_LOGGED_CHARS],
        )
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # mid-response: there is no way left to say anything
        resp = Response(refusal.status, {"msg": refusal.msg, "status": refusal.status})
        with trio.move_on_after(LINGER_S):
            await self._write(conn, stream, resp, close=True)
        await _linger(stream)

    async def _refuse(self, stream: trio.abc.Stream, why: str) -> None:
        """503 with the reason for a connection over a cap, without reading its request.

        The answer and the linger cost a task for up to ``LINGER_S``; refusals beyond
        ``max_connections`` at once are closed without an answer, so a flood of connections
        costs at most twice the cap in sockets."""
        if self._refusing >= self._cfg.max_connections:
            return
        self._refusing += 1
        try:
            resp = Response(503, {"msg": why, "status": 503})
            with trio.move_on_after(LINGER_S):
                await self._write(h11.Connection(h11.SERVER), stream, resp, close=True)
            await _linger(stream)
        finally:
            self._refusing -= 1

    @staticmethod
    async def _write(
        conn: h11.Connection,
        stream: trio.abc.Stream,
        resp: Response,
        *,
        close: bool = False,
        head_only: bool = False,
    ) -> None:
        body = resp.encode()
        headers = [
            ("content-type", resp.content_type),
            ("content-length", str(len(body))),
        ]
        headers.extend(resp.headers)
        if close:
            headers.append(("connection", "close"))
        reason = _PHRASES.get(resp.status, b"")
        head = h11.Response(status_code=resp.status, headers=headers, reason=reason)
        out = conn.send(head) or b""
        if not head_only:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)


_QUOTED_BYTES = re.compile(r"""(?:bytearray\()?b(['"])(?:\\.|(?!\1).)*\1\)?""")


def _unquoted(reason: str) -> str:
    """A refusal's reason without the request bytes h11 quotes in it (``illegal header line:
    bytearray(b'token: ...')``): a header line can carry a credential, which must not reach
    the log. The client's own answer keeps them."""
    return _QUOTED_BYTES.sub("<bytes>", reason)


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close and drain (see ``LINGER_S``); a stream that cannot half-close (TLS) is left
    to the caller's close."""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    with trio.move_on_after(LINGER_S):
        await stream.send_eof()
        drained = 0
        while drained < LINGER_BYTES:
            data = await stream.receive_some(_RECEIVE_BYTES)
            if not data:
                return
            drained += len(data)


def _head_too_large(limit: int) -> _Refusal:
    return _Refusal(431, f"request line and headers exceed {limit} bytes")


def _check_head_size(head: h11.Request, limit: int) -> None:
    """h11 measures a head only while it is incomplete, so one that arrives whole in a read
    may be up to a read's size past ``limit``: measure the parsed head too (as h11 gives it,
    without the whitespace it strips, so never more than what was sent)."""
    size = len(head.method) + len(head.target) + len(b"  HTTP/1.1\r\n\r\n")
    size += sum(len(name) + len(value) + 4 for name, value in head.headers)
    if size > limit:
        raise _head_too_large(limit)


def _check_declared_length(head: h11.Request, limit: int) -> None:
    """A body declared larger than ``limit`` is refused before a byte of it is read (h11 has
    checked that the value is a number)."""
    for name, value in head.headers:
        if name == b"content-length" and int(value) > limit:
            raise _Refusal(413, f"body of {int(value)} bytes exceeds {limit} bytes")
