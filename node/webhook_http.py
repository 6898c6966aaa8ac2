"""A one-shot HTTP/1.1 POST on trio and h11, for webhook deliveries.

One connection per request and ``Connection: close``: webhook requests are rare next to the
cost of a connect, and a connection left over from a receiver's bad moment must never carry the
next event. Only the status code of the answer matters; its body is read (bounded) and dropped.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import h11
import trio

MAX_ANSWER_BYTES = 64 * 1024
"""A receiver's answer body is read up to this much, then the connection is dropped."""


class PostError(Exception):
    """No complete answer: refused, reset, timed out, too large or not HTTP."""


@dataclass(frozen=True)
class Target:
    """Where a webhook URL points: scheme, host, port and the request target without query."""

    https: bool
    host: str
    port: int
    path: str
    query: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        return cls(https, parts.hostname, port, parts.path or "/", parts.query)

    def with_params(self, **params: str) -> str:
        """The request target with ``params`` added to the URL's own query."""
        extra = urlencode(params)
        query = f"{self.query}&{extra}" if self.query else extra
        return f"{self.path}?{query}"


async def post(
    target: Target, params: dict[str, str], body: bytes, headers: dict[str, str], timeout_s: float
) -> int:
    """POST ``body`` (JSON) and return the answer's status code; raises :class:`PostError`."""
    request_headers = [
        ("Host", f"{target.host}:{target.port}"),
        ("Connection", "close"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("User-Agent", "raftchat-webhook"),
        *headers.items(),
    ]
    conn = h11.Connection(h11.CLIENT)
    try:
        with trio.fail_after(timeout_s):
            stream: trio.abc.Stream
            if target.https:
                stream = await trio.open_ssl_over_tcp_stream(
                    target.host, target.port, ssl_context=ssl.create_default_context()
                )
            else:
                stream = await trio.open_tcp_stream(target.host, target.port)
            async with stream:
                out = conn.send(
                    h11.Request(
                        method="POST",
                        target=target.with_params(**params),
                        headers=request_headers,
                    )
                )
                out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                return await _status_of_answer(conn, stream)
    except (
        OSError,
        trio.TooSlowError,
        trio.BrokenResourceError,
        h11.ProtocolError,
        ssl.SSLError,
    ) as e:
        raise PostError(f"{type(e).__name__}: {e}") from e


async def _status_of_answer(conn: h11.Connection, stream: trio.abc.Stream) -> int:
    status = 0
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            # b"" marks EOF, which h11 turns into an error if the answer is not complete.
            conn.receive_data(bytes(await stream.receive_some(16384)))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_ANSWER_BYTES:
                raise PostError("answer body too large")
        elif isinstance(event, h11.EndOfMessage):
            return status
        elif isinstance(event, h11.ConnectionClosed):
            raise PostError("connection closed before the answer ended")
