"""A blocking facade of the reconnecting session, for plain scripts: ``connect_sync``.

The session runs in a trio loop on a background thread; each method hands one call to that
loop (``trio.from_thread.run``) and blocks until it is done. Usage::

    with connect_sync(["127.0.0.11:5100"], uid="bob", token="t",
                      http="http://127.0.0.11:5001") as s:
        s.send("alice", ChannelType.PERSON, b"hi")
        message = s.receive(timeout=10)

Timeouts raise the built-in ``TimeoutError`` (not trio's), errors are the session's.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager, suppress
from typing import Any, Generic, ParamSpec, TypeVar, Unpack

import trio

from .errors import ClientClosed
from .models import Message
from .session import Session, open_session
from .wkproto import SendOptions, SendResult

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Portal(Generic[T]):
    """A trio loop on its own thread, inside one async context manager (whose value is
    ``value``), until ``close``. Calls from other threads run in that loop."""

    def __init__(self, open_cm: Callable[[], AbstractAsyncContextManager[T]], name: str) -> None:
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.crash: BaseException | None = None
        """What ended the loop early, if anything did."""
        started: queue.Queue[tuple[T] | BaseException] = queue.Queue(maxsize=1)

        async def main() -> None:
            try:
                async with open_cm() as value:
                    self._stop = trio.Event()
                    self._token = trio.lowlevel.current_trio_token()
                    started.put((value,))
                    await self._stop.wait()
            except BaseException as e:
                if self._token is None:
                    started.put(e)
                else:
                    self.crash = e

        self._thread = threading.Thread(target=trio.run, args=(main,), name=name, daemon=True)
        self._thread.start()
        got = started.get()
        if isinstance(got, BaseException):
            self._thread.join()
            raise got
        self.value: T = got[0]

    def call(self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` in the loop and wait for it. ``trio.TooSlowError``
        becomes ``TimeoutError``."""
        try:
            return trio.from_thread.run(
                functools.partial(fn, *args, **kwargs), trio_token=self._token
            )
        except trio.TooSlowError as e:
            raise TimeoutError(str(e) or "timed out") from None
        except trio.RunFinishedError:
            raise ClientClosed(f"the session's loop has ended: {self.crash!r}") from None

    def close(self) -> None:
        """Leave the context manager and end the loop (idempotent)."""
        stop = self._stop
        if stop is not None and self._thread.is_alive():
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join()


class SyncSession:
    """The blocking twin of ``client.session.Session`` (same methods, same meaning; timeouts in
    seconds as ``timeout``)."""

    def __init__(self, portal: Portal[Session]) -> None:
        self._portal = portal
        self.session = portal.value
        """The trio session underneath; only touch it through this object's methods."""

    @property
    def uid(self) -> str:
        return self.session.uid

    @property
    def connections(self) -> int:
        return self.session.connections

    @property
    def connected(self) -> bool:
        return self.session.connected

    def send(
        self,
        channel_id: str,
        channel_type: int,
        payload: bytes,
        *,
        client_msg_no: str | None = None,
        timeout: float = 10.0,
        **options: Unpack[SendOptions],
    ) -> SendResult:
        """``Session.send``: returns once the message is durable, across reconnections."""
        send = functools.partial(self.session.send, client_msg_no=client_msg_no, **options)
        return self._portal.call(send, channel_id, channel_type, payload, timeout_s=timeout)

    def receive(self, timeout: float = 10.0) -> Message:
        """The next message; ``TimeoutError`` if none came within ``timeout`` seconds."""
        return self._portal.call(self.session.receive, timeout)

    def follow(self, channel_id: str, channel_type: int, after_seq: int | None = None) -> None:
        self._portal.call(self.session.follow, channel_id, channel_type, after_seq)

    def drop_connection(self) -> None:
        self._portal.call(self.session.drop_connection)

    def wait_connected(self, timeout: float = 10.0) -> None:
        self._portal.call(self.session.wait_connected, timeout)

    def __iter__(self) -> Iterator[Message]:
        """Messages as they come, until the session ends."""
        while True:
            try:
                yield self.receive(timeout=3600.0)
            except TimeoutError:
                continue
            except ClientClosed:
                return

    def close(self) -> None:
        self._portal.close()


@contextmanager
def connect_sync(
    nodes: str | Sequence[str | tuple[str, int]],
    *,
    uid: str,
    token: str,
    http: str | Sequence[str] | None = None,
    **options: Any,
) -> Iterator[SyncSession]:
    """``client.session.open_session`` for blocking code: same arguments, except that
    ``http`` takes base URLs only (the session's HTTP client lives in its own loop)."""

    def open_cm() -> AbstractAsyncContextManager[Session]:
        return open_session(nodes, uid=uid, token=token, http=http, **options)

    session = SyncSession(Portal(open_cm, name=f"raftchat-session-{uid}"))
    try:
        yield session
    finally:
        session.close()
