"""The send pipeline: SENDs from every session and the HTTP API meet here.

One task drains the queue in batches (group commit): for each batch it checks permissions and
dedupe, assigns contiguous 1-based seqs per channel, writes everything in ONE RocksDB write
batch, fsyncs the WAL once in a worker thread, and only then completes the senders (SENDACK
means durable). Fan-out to online sessions follows, and never holds up an acknowledgement.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from proto.wkproto import ChannelType, HeaderFlag, ReasonCode

from .channels import MAX_ID_BYTES
from .ids import SnowflakeIds
from .log import get_logger
from .storage import MessageRecord, Store

log = get_logger("pipeline")

SYSTEM_UID = "____system"


@dataclass(slots=True)
class SendRequest:
    from_uid: str
    channel_id: str
    """Canonical id (``a@b`` for person channels)."""
    channel_type: int
    client_msg_no: str
    payload: bytes
    setting: int = 0
    flags: int = 0
    expire: int = 0
    topic: str = ""
    stream_no: str = ""
    origin_conn: int | None = None
    """The connection that sent it; delivery skips it (the sender has the message)."""
    trusted: bool = False
    """Sent through the HTTP API by the app backend: no subscriber check, as in WuKongIM."""


@dataclass(frozen=True, slots=True)
class SendOutcome:
    reason: ReasonCode
    message_id: int = 0
    message_seq: int = 0
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        return self.reason == ReasonCode.SUCCESS


MAX_CLIENT_MSG_NO_BYTES = 128
MAX_TOPIC_BYTES = 255
MAX_STREAM_NO_BYTES = 128


def request_problem(req: SendRequest) -> str | None:
    """Why a send cannot be stored as given, or ``None``. The gateway and the HTTP API check
    this first to answer precisely; the pipeline checks again so that nothing unstorable can
    reach a write batch."""
    for name, value, limit in (
        ("client_msg_no", req.client_msg_no, MAX_CLIENT_MSG_NO_BYTES),
        ("topic", req.topic, MAX_TOPIC_BYTES),
        ("stream_no", req.stream_no, MAX_STREAM_NO_BYTES),
        ("channel_id", req.channel_id, 2 * MAX_ID_BYTES + 1),
        ("from_uid", req.from_uid, MAX_ID_BYTES),
    ):
        if len(value.encode()) > limit:
            return f"{name} is longer than {limit} bytes"
    if not 0 <= req.expire <= 0xFFFFFFFF:
        return "expire must fit 32 bits"
    return None


Callback = Callable[[SendOutcome], None]
Deliver = Callable[[MessageRecord, "int | None"], None]


class SendPipeline:
    def __init__(
        self,
        store: Store,
        ids: SnowflakeIds,
        deliver: Deliver,
        *,
        commit_window_s: float = 0.001,
        max_batch: int = 512,
        queue_size: int = 100_000,
    ) -> None:
        self._store = store
        self._ids = ids
        self._deliver = deliver
        self._window_s = commit_window_s
        self._max_batch = max_batch
        self._send, self._recv = trio.open_memory_channel[tuple[SendRequest, Callback]](queue_size)
        self._heads: dict[tuple[int, str], int] = {}
        self.committed_batches = 0
        self.committed_messages = 0

    # --- entry points ---------------------------------------------------------------------

    def submit_nowait(self, req: SendRequest, done: Callback) -> None:
        """Queue a send; ``done`` runs on the trio thread once the outcome is known."""
        try:
            self._send.send_nowait((req, done))
        except trio.WouldBlock:
            done(SendOutcome(ReasonCode.SYSTEM_ERROR))

    async def submit(self, req: SendRequest) -> SendOutcome:
        result: list[SendOutcome] = []
        ready = trio.Event()

        def done(outcome: SendOutcome) -> None:
            result.append(outcome)
            ready.set()

        self.submit_nowait(req, done)
        await ready.wait()
        return result[0]

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            batch = [await self._recv.receive()]
            with trio.move_on_after(self._window_s):
                while len(batch) < self._max_batch:
                    batch.append(await self._recv.receive())
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[SendRequest, Callback]]) -> None:
        now_ms = int(time.time() * 1000)
        wb = self._store.batch()
        outcomes: list[SendOutcome] = []
        fresh: list[tuple[MessageRecord, int | None]] = []
        in_batch: dict[tuple[int, str, str, str], SendOutcome] = {}
        try:
            for req, _ in batch:
                outcome, record = self._prepare(req, now_ms, in_batch)
                outcomes.append(outcome)
                if record is not None:
                    if record.message_seq:
                        wb.append_message(record)
                    fresh.append((record, req.origin_conn))
            if fresh:
                self._store.write(wb)
        except Exception:
            # Nothing of the batch was written (a RocksDB write is atomic): a definite failure.
            log.exception("commit failed; batch answered with SystemError", size=len(batch))
            self._heads.clear()  # the head cache may be ahead of the store: re-read it
            outcomes = [SendOutcome(ReasonCode.SYSTEM_ERROR) for _ in batch]
            fresh = []
        if fresh:
            # A failed fsync leaves the batch neither surely durable nor surely absent, so no
            # answer would be honest: stop the node (fail-stop) instead of acknowledging.
            await trio.to_thread.run_sync(self._store.flush_wal)
        self.committed_batches += 1
        self.committed_messages += len(fresh)
        for (_, done), outcome in zip(batch, outcomes, strict=True):
            done(outcome)
        for record, origin in fresh:
            self._deliver(record, origin)

    def _prepare(
        self,
        req: SendRequest,
        now_ms: int,
        in_batch: dict[tuple[int, str, str, str], SendOutcome],
    ) -> tuple[SendOutcome, MessageRecord | None]:
        """Decide one send: refuse it, answer it from dedupe, or build its record."""
        if request_problem(req) is not None:
            return SendOutcome(ReasonCode.PAYLOAD_DECODE_ERROR), None
        reason = self._permission(req)
        if reason != ReasonCode.SUCCESS:
            return SendOutcome(reason), None
        no_persist = bool(req.flags & HeaderFlag.NO_PERSIST)
        key = (req.channel_type, req.channel_id, req.from_uid, req.client_msg_no)
        if req.client_msg_no and not no_persist:
            if key in in_batch:
                return in_batch[key], None
            found = self._store.get_dedupe(*key)
            if found is not None:
                return SendOutcome(ReasonCode.SUCCESS, found[0], found[1], duplicate=True), None
        seq = 0
        if not no_persist:
            head_key = (req.channel_type, req.channel_id)
            head = self._heads.get(head_key)
            if head is None:
                head = self._store.head_seq(*head_key)
            seq = head + 1
            self._heads[head_key] = seq
        record = MessageRecord(
            message_id=self._ids.next(),
            message_seq=seq,
            timestamp_ms=now_ms,
            channel_id=req.channel_id,
            channel_type=req.channel_type,
            from_uid=req.from_uid,
            client_msg_no=req.client_msg_no,
            payload=req.payload,
            setting=req.setting,
            flags=req.flags & (HeaderFlag.NO_PERSIST | HeaderFlag.RED_DOT | HeaderFlag.SYNC_ONCE),
            expire=req.expire,
            topic=req.topic,
            stream_no=req.stream_no,
        )
        outcome = SendOutcome(ReasonCode.SUCCESS, record.message_id, seq)
        if req.client_msg_no and not no_persist:
            in_batch[key] = SendOutcome(ReasonCode.SUCCESS, record.message_id, seq, True)
        return outcome, record

    def _permission(self, req: SendRequest) -> ReasonCode:
        """The first-issue subset of WuKongIM's send checks (the full set is issue 5)."""
        if req.channel_type == ChannelType.PERSON:
            return ReasonCode.SUCCESS
        if req.channel_type != ChannelType.GROUP:
            return ReasonCode.NOT_SUPPORT_CHANNEL_TYPE
        info = self._store.get_channel(req.channel_type, req.channel_id)
        if info is None and req.trusted:
            return ReasonCode.CHANNEL_NOT_EXIST
        if info is not None and info.ban and req.from_uid != SYSTEM_UID:
            return ReasonCode.BAN
        if info is not None and info.disband:
            return ReasonCode.DISBAND
        if req.trusted or req.from_uid == SYSTEM_UID:
            return ReasonCode.SUCCESS
        if not self._store.is_subscriber(req.channel_type, req.channel_id, req.from_uid):
            # WuKongIM answers a send to a group that was never created the same way.
            return ReasonCode.SUBSCRIBER_NOT_EXIST
        return ReasonCode.SUCCESS
