"""A small HTTP/1.1 JSON client on trio and h11, for the workload and the runner.

One connection per request: the chaos workload sends a few requests a second per client and must
not carry a broken keep-alive connection from before a fault into the next request. Every
failure to get an answer is :class:`HttpError` (the caller records it as "unknown outcome").
"""

from __future__ import annotations

import json
from typing import Any

import h11
import trio

MAX_BODY = 64 * 1024 * 1024


class HttpError(Exception):
    """No complete answer: refused, reset, timed out or unparsable."""


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout_s: float = 10.0,
) -> tuple[int, Any]:
    """(status, decoded JSON body or None). Raises HttpError when there is no answer."""
    data = b"" if body is None else json.dumps(body).encode()
    headers = [("Host", f"{host}:{port}"), ("Connection", "close")]
    if body is not None:
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    conn = h11.Connection(h11.CLIENT)
    try:
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                out = conn.send(h11.Request(method=method, target=path, headers=headers))
                if data:
                    out += conn.send(h11.Data(data=data))
                out += conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                return await _read_response(conn, stream)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError) as e:
        raise HttpError(f"{method} {path} on {host}:{port}: {type(e).__name__}: {e}") from e


async def _read_response(conn: h11.Connection, stream: trio.SocketStream) -> tuple[int, Any]:
    status = 0
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            raw = await stream.receive_some(65536)
            conn.receive_data(raw)  # b"" marks EOF, which h11 turns into an error if early
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY:
                raise HttpError("answer too large")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise HttpError("connection closed before the answer ended")
    raw_body = b"".join(chunks)
    try:
        return status, json.loads(raw_body) if raw_body else None
    except ValueError as e:
        raise HttpError(f"answer is not JSON: {raw_body[:80]!r}") from e
