"""Bind failures of the cluster's listeners, named by address.

A listener that cannot bind must say which address it wanted and why, in one line: pysyncobj
and grpcio both hide the operating system's reason (pysyncobj swallows it, grpcio prints it from
its C core to stderr and raises a bare "Failed to bind"), so these helpers recover it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio


class ListenError(OSError):
    """A listener could not bind ``address`` (``"host:port"``)."""

    def __init__(self, what: str, address: str, cause: OSError | str) -> None:
        reason = _reason(cause)
        super().__init__(f"cannot listen on {address} ({what}): {reason}")
        if isinstance(cause, OSError):
            self.errno = cause.errno
        self.what = what
        self.address = address
        self.reason = reason


def _reason(cause: OSError | str) -> str:
    if isinstance(cause, str):
        return cause
    if isinstance(cause, ListenError):
        return cause.reason
    return cause.strerror or str(cause)


async def start_listener(
    nursery: trio.Nursery,
    what: str,
    host: str,
    port: int,
    serve: Callable[..., Awaitable[Any]],
) -> None:
    """``nursery.start(serve)``, with a bind failure raised as a ListenError naming
    ``host:port``, not as the bare OSError trio passes on."""
    try:
        await nursery.start(serve)
    except OSError as e:
        raise ListenError(what, f"{host}:{port}", e) from None


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def bind_problem(address: str) -> OSError | None:
    """Why ``address`` cannot be bound right now, or None if it can.

    Binds a throwaway socket the way the servers do (``SO_REUSEADDR``: a connection lingering in
    TIME_WAIT is no obstacle, another listener is) and closes it at once."""
    host, port = split_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        return e
    family, kind, proto, _, sockaddr = infos[0]
    with contextlib.closing(socket.socket(family, kind, proto)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as e:
            return e
    return None


def os_error_behind(exc: BaseException) -> OSError | None:
    """The first OSError among the exceptions ``exc`` was raised while handling (pysyncobj
    raises its own exception from inside the ``except`` that caught the bind error)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
