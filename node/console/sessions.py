"""Console log-ins: random session ids held in memory, each valid for a bounded time.

A session is created only by presenting the admin token (``routes.py``), and lives in this
node's memory only: a restart logs every operator out, and another node's console asks for the
token again. The number of sessions is capped, so that a client holding the token cannot make
the node keep an unbounded table (the oldest session is dropped first).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

IDLE_TIMEOUT_S = 30 * 60.0
"""A session unused this long is over."""
MAX_AGE_S = 12 * 3600.0
"""A session is over this long after its log-in, however busy."""
MAX_SESSIONS = 256


class SessionStore:
    def __init__(
        self,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_age_s: float = MAX_AGE_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle = idle_timeout_s
        self._max_age = max_age_s
        self._max = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """Session id -> (created, last used), least recently used first."""

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> str:
        now = self._clock()
        self._expire(now)
        while len(self._sessions) >= self._max:
            self._sessions.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = (now, now)
        return sid

    def touch(self, sid: str) -> bool:
        """Whether ``sid`` is a live session; if so, it counts as used now."""
        now = self._clock()
        entry = self._sessions.get(sid)
        if entry is None:
            return False
        created, used = entry
        if now - used > self._idle or now - created > self._max_age:
            del self._sessions[sid]
            return False
        self._sessions[sid] = (created, now)
        self._sessions.move_to_end(sid)
        return True

    def drop(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def _expire(self, now: float) -> None:
        stale = [
            sid
            for sid, (created, used) in self._sessions.items()
            if now - used > self._idle or now - created > self._max_age
        ]
        for sid in stale:
            del self._sessions[sid]
