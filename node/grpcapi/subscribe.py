"""``Messages.Subscribe``: a channel's or a user's stored messages, in seq order per channel,
each once, from the client's resume positions on, then live.

How it stays exact:

* The log is the truth. A stream keeps, per channel, the highest seq it has covered (sent, or
  skipped because the reader does not see it) and only ever reads upwards from there through
  the slot group's leader (the ``/channel/messagesync`` read, after a read barrier).
* Every node receives every committed batch (ADR 006), so ``LiveFeed`` wakes the streams of
  this node as messages commit. A live message right after the covered seq is sent as is; one
  further ahead means something was missed (a delivery dropped, a node restarting), so the gap
  is read from the log first; one at or below it is a duplicate and is dropped.
* When nothing wakes a stream for ``CATCH_UP_S`` it reads anyway (a bounded safety net for
  wakeups lost with a stalled peer), and reads that fail (no leader during an election) are
  retried the same way rather than ending the stream.

A user stream's channels are its conversations (``/conversation/sync``), plus any channel a
live message for the user names; the same sync, given the covered positions, tells which
channels moved while nothing woke the stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from proto.raftchat.v1 import api_pb2

from ..channels import view_channel_id
from ..command_channels import makes_conversations
from ..groups.views import message_json
from ..http.common import ApiContext, check_id, message_resp, person_or_channel
from ..http.server import ApiError
from ..log import get_logger
from ..router import ClusterUnavailable
from ..storage import MessageRecord
from .convert import from_json

log = get_logger("grpc.subscribe")

CATCH_UP_S = 1.5
"""Idle time after which a stream reads the log anyway."""
RETRY_S = 0.5
"""Wait before trying again after a read failed."""
PAGE = 500
"""Seqs read per log read."""
PENDING_LIMIT = 10_000
"""Live messages a stream may hold unprocessed; past it they are dropped and read from the log."""

Key = tuple[int, str]
"""(channel type, canonical channel id)."""
CallRoute = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


class Watcher:
    """Live messages for one stream, collected between its wakeups (trio thread only)."""

    def __init__(self) -> None:
        self._pending: list[MessageRecord] = []
        self._wake = trio.Event()
        self.overflowed = False

    def notify(self, record: MessageRecord) -> None:
        if len(self._pending) < PENDING_LIMIT:
            self._pending.append(record)
        else:
            self.overflowed = True  # the stream reads the log instead
        self._wake.set()

    async def wait(self, timeout_s: float) -> bool:
        """True when woken, False after ``timeout_s`` of quiet."""
        with trio.move_on_after(timeout_s):
            await self._wake.wait()
            return True
        return False

    def take(self) -> tuple[list[MessageRecord], bool]:
        pending, self._pending = self._pending, []
        overflowed, self.overflowed = self.overflowed, False
        self._wake = trio.Event()
        return pending, overflowed


class LiveFeed:
    """Streams of this node by channel and by user; ``publish`` runs for every message this
    node delivers (``Node.deliver_local``)."""

    def __init__(self) -> None:
        self._by_channel: dict[Key, set[Watcher]] = {}
        self._by_user: dict[str, set[Watcher]] = {}

    def publish(self, record: MessageRecord, uids: list[str]) -> None:
        if record.message_seq == 0:
            return  # online only (no_persist, commands): not part of any log
        for watcher in self._by_channel.get((record.channel_type, record.channel_id), ()):
            watcher.notify(record)
        for uid in uids:
            for watcher in self._by_user.get(uid, ()):
                watcher.notify(record)

    @contextlib.contextmanager
    def watch(self, *, channel: Key | None = None, uid: str | None = None) -> Iterator[Watcher]:
        watcher = Watcher()
        table: dict[Any, set[Watcher]] = self._by_channel if channel is not None else self._by_user
        key: Any = channel if channel is not None else uid
        table.setdefault(key, set()).add(watcher)
        try:
            yield watcher
        finally:
            table[key].discard(watcher)
            if not table[key]:
                del table[key]


@dataclass
class _Stream:
    """One Subscribe call."""

    ctx: ApiContext
    call_route: CallRoute
    emit: Callable[[Any], Awaitable[None]]
    viewer: str
    """Whose view: the login_uid of a channel target ("" = none), the uid of a user target."""
    user: bool
    covered: dict[Key, int] = field(default_factory=dict)
    """Per channel, the highest seq sent or skipped as not visible to the viewer."""

    def view(self, key: Key) -> str:
        return view_channel_id(key[1], key[0], self.viewer) if self.viewer else key[1]

    async def send_start(self) -> None:
        positions = [
            api_pb2.Position(channel_id=self.view(k), channel_type=k[0], message_seq=seq)
            for k, seq in sorted(self.covered.items())
        ]
        await self.emit(api_pb2.SubscribeEvent(start=api_pb2.Positions(positions=positions)))

    async def send(self, message: dict[str, Any]) -> None:
        resp = message_resp(message, self.viewer)
        await self.emit(api_pb2.SubscribeEvent(message=from_json(resp, api_pb2.Message())))

    async def catch_up(self, key: Key) -> None:
        """Send what the log holds above ``covered[key]``, up to the head."""
        ctype, cid = key
        while True:
            after = self.covered[key]
            page = await self.ctx.router.read(
                cid,
                {
                    "q": "messages",
                    "channel_id": cid,
                    "channel_type": ctype,
                    # The window [after + 1, after + PAGE] upwards: knowing the window, the
                    # stream knows what it covered even when the reader sees none of it.
                    "start_message_seq": after + 1,
                    "end_message_seq": after + 1 + PAGE,
                    "limit": PAGE,
                    "pull_mode": 1,
                    "login_uid": self.viewer,
                },
            )
            for m in page["messages"]:
                if m["message_seq"] > self.covered[key]:
                    await self.send(m)
                    self.covered[key] = m["message_seq"]
            head = int(page["head"])
            self.covered[key] = max(self.covered[key], min(after + PAGE, head))
            if self.covered[key] >= head:
                return

    async def on_live(self, record: MessageRecord) -> None:
        key = (record.channel_type, record.channel_id)
        if key not in self.covered:
            if not self.user or not makes_conversations(*key):
                return
            self.covered[key] = 0  # a channel new to the stream: all of it is news
        seq = record.message_seq
        if seq <= self.covered[key]:
            return  # already sent (or read from the log meanwhile)
        if seq == self.covered[key] + 1:
            await self.send(message_json(record))
            self.covered[key] = seq
        else:
            await self.catch_up(key)


async def run_subscribe(
    ctx: ApiContext,
    feed: LiveFeed,
    call_route: CallRoute,
    request: api_pb2.SubscribeRequest,
    emit: Callable[[Any], Awaitable[None]],
) -> None:
    target = request.WhichOneof("target")
    if target == "channel":
        t = request.channel
        login_uid, canonical, ctype = person_or_channel(
            {"channel_id": t.channel_id, "channel_type": t.channel_type, "login_uid": t.login_uid},
            "login_uid",
        )
        if login_uid:
            check_id(login_uid, "login_uid")
        stream = _Stream(ctx, call_route, emit, login_uid, user=False)
        await _channel_stream(stream, feed, request, (ctype, canonical))
    elif target == "uid":
        stream = _Stream(ctx, call_route, emit, check_id(request.uid, "uid"), user=True)
        await _user_stream(stream, feed, request)
    else:
        raise ApiError(400, "target is required: channel or uid")


async def _channel_stream(
    stream: _Stream, feed: LiveFeed, request: api_pb2.SubscribeRequest, key: Key
) -> None:
    with feed.watch(channel=key) as watcher:
        given = [p.message_seq for p in request.positions]
        if given:
            stream.covered[key] = max(given)
        elif request.only_new:
            ctype, cid = key
            query = {"q": "head", "channel_id": cid, "channel_type": ctype}
            stream.covered[key] = int(await stream.ctx.router.read(cid, query))
        else:
            stream.covered[key] = 0
        await stream.send_start()
        await _follow(stream, watcher, poll=lambda: _poll_channel(stream, key))


async def _poll_channel(stream: _Stream, key: Key) -> None:
    await stream.catch_up(key)


async def _user_stream(stream: _Stream, feed: LiveFeed, request: api_pb2.SubscribeRequest) -> None:
    uid = stream.viewer
    for p in request.positions:
        _, canonical, ctype = person_or_channel(
            {"channel_id": p.channel_id, "channel_type": p.channel_type, "uid": uid}, "uid"
        )
        stream.covered[(ctype, canonical)] = p.message_seq
    with feed.watch(uid=uid) as watcher:
        # Watching first: a message committed while the conversations are read is then
        # either in their heads or among the live ones, never in neither.
        moved = await _moved_conversations(stream)
        for key, last in moved.items():
            if key not in stream.covered:
                stream.covered[key] = last if request.only_new else 0
        await stream.send_start()
        for key, last in moved.items():
            if last > stream.covered[key]:
                await stream.catch_up(key)
        await _follow(stream, watcher, poll=lambda: _poll_user(stream))


async def _moved_conversations(stream: _Stream) -> dict[Key, int]:
    """The user's conversations whose last seq is above what the stream covered (every one when
    it covered none), with that last seq."""
    known = "|".join(
        f"{stream.view(k)}:{k[0]}:{seq}"
        for k, seq in stream.covered.items()
        if makes_conversations(*k)
    )
    rows = await stream.call_route(
        "POST",
        "/conversation/sync",
        {"uid": stream.viewer, "msg_count": 0, "last_msg_seqs": known},
    )
    moved: dict[Key, int] = {}
    for row in rows:
        _, canonical, ctype = person_or_channel(
            {
                "channel_id": row["channel_id"],
                "channel_type": row["channel_type"],
                "uid": stream.viewer,
            },
            "uid",
        )
        moved[(ctype, canonical)] = int(row["last_msg_seq"])
    return moved


async def _poll_user(stream: _Stream) -> None:
    for key, last in (await _moved_conversations(stream)).items():
        stream.covered.setdefault(key, 0)
        if last > stream.covered[key]:
            await stream.catch_up(key)


async def _follow(stream: _Stream, watcher: Watcher, poll: Callable[[], Awaitable[None]]) -> None:
    """Live messages as they are delivered here; the log when quiet or after a miss."""
    stale = False  # a read failed or live messages were dropped: read the log next time
    while True:
        woken = await watcher.wait(RETRY_S if stale else CATCH_UP_S)
        records, overflowed = watcher.take()
        try:
            for record in records:
                await stream.on_live(record)
            if stale or overflowed or not woken:
                await poll()
            stale = False
        except (ClusterUnavailable, ApiError) as e:
            if isinstance(e, ApiError) and e.status != 503:
                raise
            # No leader right now (an election, a node down): keep the stream and retry.
            log.info("subscribe read failed, retrying", error=str(e))
            stale = True
