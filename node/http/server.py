"""A small HTTP/1.1 server on trio and h11: JSON in, JSON out, keep-alive, bounded bodies.

The API is plain JSON over POST/GET, so a full framework would add dependencies and CPU for
nothing; h11 gives a correct, sans-IO HTTP parser.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from ..log import get_logger

log = get_logger("http")

READ_TIMEOUT_S = 30.0


class ApiError(Exception):
    """Answered as ``{"msg": ..., "status": N}`` with HTTP status N (WuKongIM's envelope)."""

    def __init__(self, status: int, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.extra = extra


def bad_request(msg: str) -> ApiError:
    return ApiError(400, msg)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        if not self.body.strip():
            raise bad_request("request body is empty; expected JSON")
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad_request(f"request body is not valid JSON: {e}") from None

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise bad_request("request body must be a JSON object")
        return data


@dataclass
class Response:
    status: int = 200
    body: Any = field(default_factory=lambda: {"status": 200})

    def encode(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Handler] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._routes[(method.upper(), path)] = handler

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.add(method, path, fn)
            return fn

        return deco

    def paths(self) -> list[tuple[str, str]]:
        return sorted(self._routes)

    async def dispatch(self, req: Request) -> Response:
        handler = self._routes.get((req.method, req.path))
        if handler is None:
            if any(p == req.path for _, p in self._routes):
                return Response(405, {"msg": f"method {req.method} not allowed", "status": 405})
            return Response(404, {"msg": f"no route {req.path}", "status": 404})
        try:
            return await handler(req)
        except ApiError as e:
            return Response(e.status, {"msg": e.msg, "status": e.status, **e.extra})
        except Exception:
            log.exception("handler failed", path=req.path)
            return Response(500, {"msg": "internal error", "status": 500})


class HttpServer:
    def __init__(self, router: Router, max_body_bytes: int) -> None:
        self._router = router
        self._max_body = max_body_bytes

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await trio.serve_tcp(self._handle, port, host=host, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                with trio.move_on_after(READ_TIMEOUT_S):
                    req = await self._read_request(conn, stream)
                    if req is None:
                        return
                    resp = await self._router.dispatch(req)
                    await self._write(conn, stream, resp)
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                    continue
                return  # read timeout: drop the idle keep-alive connection
        except (h11.RemoteProtocolError, _BodyTooLarge) as e:
            status = 413 if isinstance(e, _BodyTooLarge) else 400
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                resp = Response(status, {"msg": f"bad HTTP request: {e}", "status": status})
                # The peer may be gone or h11 may refuse; either way we just close.
                with contextlib.suppress(Exception):
                    await self._write(conn, stream, resp)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._max_body:
                    raise _BodyTooLarge(f"body exceeds {self._max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                target = head.target.decode("latin-1")
                parts = urlsplit(target)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in head.headers}
                return Request(head.method.decode(), parts.path, query, headers, bytes(body))

    @staticmethod
    async def _write(conn: h11.Connection, stream: trio.SocketStream, resp: Response) -> None:
        body = resp.encode()
        headers = [
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", str(len(body))),
        ]
        out = conn.send(h11.Response(status_code=resp.status, headers=headers))
        out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)


class _BodyTooLarge(Exception):
    pass
