"""Lines typed in ``raftchat chat`` on their way to the server: kept in order while the
session is away, each with the ``client_msg_no`` it got when it was typed, so that however
often it is sent (a connection lost before the SENDACK, a reconnection to another node) the
server stores it once.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from .errors import SendRefused
from .payloads import text as text_payload
from .session import Session

MAX_QUEUED = 1000


@dataclass(frozen=True, slots=True)
class Outgoing:
    text: str
    client_msg_no: str


class Outbox:
    """A bounded first-in first-out queue of lines. The line being sent stays at the head
    (and in ``len``) until the server has it."""

    def __init__(self, limit: int = MAX_QUEUED) -> None:
        self.limit = limit
        self._lines: deque[Outgoing] = deque()
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._lines)

    def put(self, text: str) -> Outgoing | None:
        """Queue ``text`` with a fresh ``client_msg_no``; None (nothing queued) when full."""
        if len(self._lines) >= self.limit:
            return None
        line = Outgoing(text, uuid.uuid4().hex)
        self._lines.append(line)
        self._wake()
        return line

    async def head(self) -> Outgoing:
        """The oldest line, waiting for one."""
        while not self._lines:
            await self._changed.wait()
        return self._lines[0]

    def done(self) -> None:
        """The head line has been stored (or refused for good): forget it."""
        self._lines.popleft()
        self._wake()

    async def wait_empty(self) -> None:
        while self._lines:
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


async def send_queued(
    session: Session,
    channel: tuple[str, int],
    outbox: Outbox,
    on_refused: Callable[[Outgoing, SendRefused], None],
) -> None:
    """Send the outbox's lines as text messages, one at a time and in order, forever.

    ``Session.send`` waits for a connection and sends again, with the same ``client_msg_no``,
    when the connection is lost before the answer; there is no deadline, because a line
    waits in the outbox as long as the session is away. A refusal (a ban, not a member, ...)
    is reported through ``on_refused`` and the next line goes on. The session giving up
    (``Session.failed``) ends this with that error."""
    while True:
        line = await outbox.head()
        try:
            await session.send(
                *channel,
                text_payload(line.text),
                client_msg_no=line.client_msg_no,
                timeout_s=math.inf,
            )
        except SendRefused as e:
            on_refused(line, e)
        outbox.done()
