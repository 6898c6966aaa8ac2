"""Webhooks: events POSTed as JSON to ``<webhook.url>?event=<name>`` (WuKongIM's outbound API).

Events (``docs/api.md``, "Webhooks"):

* ``msg.notify``: every persisted message once, sent by the slot group leader after the batch
  is durable, up to ``batch_size`` messages per POST;
* ``msg.offline``: a message and ``to_uids``, its recipients (sender excluded) with no master
  device online anywhere in the cluster; presence is asked once per committed batch;
* ``user.onlinestatus``: session logins and logouts on this node, as WuKongIM v2 strings
  ``uid-deviceFlag-online-connId-deviceOnlineCount-totalOnlineCount``, batched.

Delivery is best effort and built not to storm a failing receiver (WuKongIM issue #543):

* each kind has a bounded queue of items; a full queue drops its oldest item (counted, logged);
* ONE sender task makes every request, so at most one is in flight;
* a failure makes the whole sender wait (exponential backoff with jitter, up to a cap) before
  its next request, whichever event that carries; only a success resets the backoff. A receiver
  that is down therefore sees about one request per ``backoff_cap_s``, not one per event;
* an event is retried with the same ``event_id`` (header ``X-Raftchat-Event-Id``) up to
  ``max_attempts`` POSTs, then dropped (counted).

Queues live in memory on the leader: events queued when a node crashes are lost, and a new
leader does not resend what the old one queued.
"""

from __future__ import annotations

import itertools
import json
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import trio

from proto.raftchat.peer.v1 import peer_pb2 as pb

from .config_sections import WebhookSection
from .groups.machine import record_from_pb
from .groups.views import message_json
from .http.common import message_resp
from .log import get_logger
from .sessions import SessionLike, SessionRegistry
from .webhook_http import PostError, Target, post

log = get_logger("webhooks")

MSG_NOTIFY = "msg.notify"
MSG_OFFLINE = "msg.offline"
USER_ONLINESTATUS = "user.onlinestatus"
KINDS = (MSG_NOTIFY, MSG_OFFLINE, USER_ONLINESTATUS)

EVENT_ID_HEADER = "X-Raftchat-Event-Id"
PRESENCE_JOBS = 1024
"""Committed batches waiting for their presence lookup (msg.offline); more are dropped."""
PRESENCE_UIDS = 5000
"""Recipients gathered into one presence lookup, at most (a larger batch asks on its own)."""
DROP_LOG_INTERVAL_S = 10.0

T = TypeVar("T")

Poster = Callable[[Target, dict[str, str], bytes, dict[str, str], float], Awaitable[int]]
MastersOnline = Callable[[list[str]], Awaitable[set[str]]]


# --- pure parts (unit-tested) -----------------------------------------------------------------


def nominal_delay(failures: int, base_s: float, cap_s: float) -> float:
    """The wait after ``failures`` consecutive failures (>= 1), before jitter."""
    exponent = min(failures - 1, 62)  # 2**62 * base is past any cap; avoids huge floats
    return min(cap_s, base_s * 2.0**exponent)


def backoff_delay(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Jittered wait: between half of and the whole nominal delay, so that the nodes of a
    cluster whose receiver failed at the same moment do not come back in step."""
    nominal = nominal_delay(failures, base_s, cap_s)
    return nominal / 2 + rng.uniform(0, nominal / 2)


def most_requests_within(elapsed_s: float, base_s: float, cap_s: float) -> int:
    """The most requests a sender whose every request fails can make in ``elapsed_s`` from its
    first one: each failure n is followed by at least half the nominal delay."""
    requests, spent = 1, 0.0
    while True:
        spent += nominal_delay(requests, base_s, cap_s) / 2
        if spent > elapsed_s:
            return requests
        requests += 1


class BoundedQueue(Generic[T]):
    """FIFO of at most ``size`` items; pushing onto a full one drops the oldest."""

    def __init__(self, size: int) -> None:
        self._items: deque[T] = deque()
        self.size = size
        self.dropped = 0

    def push(self, item: T) -> bool:
        """Append ``item``; True when that dropped the oldest item."""
        self._items.append(item)
        if len(self._items) > self.size:
            self._items.popleft()
            self.dropped += 1
            return True
        return False

    def take(self, n: int) -> list[T]:
        return [self._items.popleft() for _ in range(min(n, len(self._items)))]

    def __len__(self) -> int:
        return len(self._items)


def onlinestatus_line(
    uid: str, device_flag: int, online: bool, conn_id: int, device_count: int, total: int
) -> str:
    return f"{uid}-{device_flag}-{int(online)}-{conn_id}-{device_count}-{total}"


# --- the sender -------------------------------------------------------------------------------


@dataclass
class Event:
    kind: str
    event_id: str
    body: bytes
    items: int
    attempts: int = 0


@dataclass
class KindCounters:
    sent_events: int = 0
    sent_items: int = 0
    failed_attempts: int = 0
    dropped_events: int = 0
    """Events given up after ``max_attempts``."""
    dropped_items: int = 0
    """Items inside those events, plus items pushed out of a full queue."""
    last_drop_log: float = field(default=0.0, repr=False)


class Webhooks:
    def __init__(
        self,
        settings: WebhookSection,
        node_id: int,
        registry: SessionRegistry,
        masters_online: MastersOnline,
        poster: Poster = post,
        rng: random.Random | None = None,
    ) -> None:
        self.s = settings
        self.target = Target.parse(settings.url)
        self.kinds = {k.strip() for k in settings.events.split(",") if k.strip()}
        self._registry = registry
        self._masters_online = masters_online
        self._post = poster
        self._rng = rng or random.Random()
        # Ids stay unique across restarts of the node (the counter restarts, the boot part not).
        self._ids = (f"{node_id}-{secrets.token_hex(4)}-{n}" for n in itertools.count(1))
        self._queues: dict[str, BoundedQueue[Any]] = {
            k: BoundedQueue(settings.queue_size) for k in KINDS
        }
        self._heads: dict[str, Event | None] = dict.fromkeys(KINDS)
        self.counters = {k: KindCounters() for k in KINDS}
        self._presence_send, self._presence_recv = trio.open_memory_channel[
            list[tuple[dict[str, Any], list[str]]]
        ](PRESENCE_JOBS)
        self._wake = trio.Event()
        self._turn = 0
        self.consecutive_failures = 0
        self._resume_at = 0.0

    # --- producers (synchronous, on the trio thread) -------------------------------------

    def on_committed(self, request: pb.DeliverRequest) -> None:
        """Router commit hook: the batch just became durable on this leader."""
        job: list[tuple[dict[str, Any], list[str]]] = []
        for message, rcpt in zip(request.messages, request.recipients, strict=True):
            if not message.message_seq:
                continue  # not persisted (no-persist, command): no webhook, as in WuKongIM
            # Person channels appear as the sender sees them (channel_id = the other party).
            resp = message_resp(message_json(record_from_pb(message)), message.from_uid)
            if MSG_NOTIFY in self.kinds:
                self._push(MSG_NOTIFY, resp)
            if MSG_OFFLINE in self.kinds:
                to = [u for u in rcpt.uids if u != message.from_uid]
                if to:
                    job.append((resp, to))
        if job:
            try:
                self._presence_send.send_nowait(job)
            except trio.WouldBlock:
                self._count_drop(MSG_OFFLINE, len(job), "presence lookups are behind")

    def on_session(self, session: SessionLike, online: bool) -> None:
        """Session registry listener: a session of this node logged in or out."""
        if USER_ONLINESTATUS not in self.kinds:
            return
        sessions = self._registry.of(session.uid)
        same = sum(1 for s in sessions if s.device_flag == session.device_flag)
        line = onlinestatus_line(
            session.uid, session.device_flag, online, session.conn_id, same, len(sessions)
        )
        self._push(USER_ONLINESTATUS, line)

    def _push(self, kind: str, item: Any) -> None:
        queue = self._queues[kind]
        if queue.push(item):
            self._count_drop(kind, 1, "queue full, oldest dropped")
        self._wake.set()

    def _count_drop(self, kind: str, items: int, why: str) -> None:
        c = self.counters[kind]
        c.dropped_items += items
        now = time.monotonic()
        if now - c.last_drop_log >= DROP_LOG_INTERVAL_S:  # a drop storm must not be a log storm
            c.last_drop_log = now
            log.warning("webhook items dropped", kind=kind, why=why, dropped=c.dropped_items)

    # --- tasks ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log.info("webhooks on", url=_shown(self.s.url), events=sorted(self.kinds))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._presence_loop)
            nursery.start_soon(self._send_loop)
            task_status.started()

    async def _presence_loop(self) -> None:
        """msg.offline: one cluster-wide presence question per committed batch (or several
        batches that queued up meanwhile), never one per message."""
        async for first in self._presence_recv:
            jobs = [first]
            uids = {u for _, to in first for u in to}
            while len(uids) < PRESENCE_UIDS:
                try:
                    job = self._presence_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                jobs.append(job)
                uids.update(u for _, to in job for u in to)
            try:
                masters = await self._masters_online(sorted(uids))
            except Exception as e:  # a webhook must never take the node down
                log.error("presence lookup for msg.offline failed", error=repr(e))
                self._count_drop(MSG_OFFLINE, sum(len(j) for j in jobs), "presence failed")
                continue
            for job in jobs:
                for resp, to in job:
                    offline = [u for u in to if u not in masters]
                    if offline:
                        self._push(MSG_OFFLINE, (resp, offline))

    def _next_event(self) -> Event | None:
        """The event to send next: a kind's unfinished head first, else a new one, taking the
        kinds in turn so that a busy kind does not starve the others."""
        for i in range(len(KINDS)):
            kind = KINDS[(self._turn + i) % len(KINDS)]
            head = self._heads[kind]
            if head is None and self._queues[kind]:
                head = self._heads[kind] = self._form(kind)
            if head is not None:
                self._turn = (KINDS.index(kind) + 1) % len(KINDS)
                return head
        return None

    def _form(self, kind: str) -> Event:
        event_id = next(self._ids)
        queue = self._queues[kind]
        body: Any
        if kind == MSG_OFFLINE:
            # One message per POST, as WuKongIM's MessageOfflineNotify.
            ((resp, to),) = queue.take(1)
            body, items = {**resp, "to_uids": to, "event_id": event_id}, 1
        elif kind == MSG_NOTIFY:
            messages = queue.take(self.s.batch_size)
            body, items = [{**m, "event_id": event_id} for m in messages], len(messages)
        else:
            body = queue.take(self.s.batch_size)  # strings: the id travels in the header only
            items = len(body)
        return Event(kind, event_id, json.dumps(body).encode(), items)

    async def _send_loop(self) -> None:
        while True:
            event = self._next_event()
            if event is None:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            event.attempts += 1
            ok, detail = await self._attempt(event)
            c = self.counters[event.kind]
            if ok:
                c.sent_events += 1
                c.sent_items += event.items
                self._heads[event.kind] = None
                self.consecutive_failures = 0
                continue
            c.failed_attempts += 1
            self.consecutive_failures += 1
            if event.attempts >= self.s.max_attempts:
                self._heads[event.kind] = None
                c.dropped_events += 1
                c.dropped_items += event.items
                log.warning(
                    "webhook event dropped after its last attempt",
                    kind=event.kind,
                    event_id=event.event_id,
                    attempts=event.attempts,
                    error=detail,
                )
            # The whole sender waits, whatever it sends next: no storm on a failing receiver.
            delay = backoff_delay(
                self.consecutive_failures, self.s.backoff_base_s, self.s.backoff_cap_s, self._rng
            )
            log.info(
                "webhook request failed, backing off",
                kind=event.kind,
                event_id=event.event_id,
                attempt=event.attempts,
                error=detail,
                wait_s=round(delay, 3),
            )
            self._resume_at = trio.current_time() + delay
            await trio.sleep(delay)

    async def _attempt(self, event: Event) -> tuple[bool, str]:
        headers = {
            EVENT_ID_HEADER: event.event_id,
            "X-Raftchat-Event": event.kind,
            "X-Raftchat-Attempt": str(event.attempts),
        }
        try:
            status = await self._post(
                self.target, {"event": event.kind}, event.body, headers, self.s.timeout_s
            )
        except PostError as e:
            return False, str(e)
        except Exception as e:  # a bug here counts as a failed attempt, never kills the node
            log.error("webhook request raised", kind=event.kind, error=repr(e))
            return False, repr(e)
        return 200 <= status < 300, f"HTTP {status}"

    # --- observability ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        kinds = {}
        for kind in KINDS:
            c = self.counters[kind]
            head = self._heads[kind]
            kinds[kind] = {
                "enabled": kind in self.kinds,
                "queued": len(self._queues[kind]) + (head.items if head is not None else 0),
                "sent_events": c.sent_events,
                "sent_items": c.sent_items,
                "failed_attempts": c.failed_attempts,
                "dropped_events": c.dropped_events,
                "dropped_items": c.dropped_items,
            }
        return {
            "enabled": True,
            "url": self.s.url,
            "consecutive_failures": self.consecutive_failures,
            "backoff_remaining_s": round(max(0.0, self._resume_at - now), 3),
            "events": kinds,
        }


def _shown(url: str) -> str:
    """``url`` for a log line: a secret in its user info or query (the backend's only way to
    tell our POSTs from others') must not reach the log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
