"""The replicated state machine of a slot group: applies committed commands to RocksDB.

Apply runs on every replica, on the Raft driver thread, and must be deterministic: everything
it decides comes from the command (including the leader's clock, ``time_ms``) and the group's
stored state, never from the applying node. Each command's effects and its Raft index are
written in one WriteBatch, so a journal replay after a restart skips applied commands.
"""

from __future__ import annotations

from cluster.invariant import invariant
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ReasonCode

from ..command_channels import (
    NO_PERSIST,
    RED_DOT,
    SYNC_ONCE,
    cmd_of,
    is_cmd,
    online_only,
    source_of,
)
from ..ids import next_message_id
from ..log import get_logger
from ..pipeline_rules import person_channel_problem, request_problem
from ..storage import ChannelInfo, MessageRecord, Store
from ..storage.db import Batch
from ..usertokens import record_of, still_the_same
from . import (
    channel_state,
    command_sync,
    conversations,
    imports,
    message_ops,
    permissions,
    streams,
)
from .context import ApplyContext

_PERSISTED_FLAGS = NO_PERSIST | RED_DOT | SYNC_ONCE
_DedupeKey = tuple[int, str, str, str]
"""(channel type, channel id, sender, client_msg_no): what makes a retry the same send."""


log = get_logger("groups")
_PERMIT_CACHE_SIZE = 100_000


class GroupMachine:
    def __init__(self, group: int, store: Store, *, skip_dedupe: bool = False) -> None:
        self.group = group
        self.store = store
        self.applied_commands = 0
        # SABOTAGE (tests only, ``testing.sabotage = skip-dedupe``): retries become duplicates.
        self.skip_dedupe = skip_dedupe
        # Send permissions by (type, channel, sender, system, trusted). Only metadata ops and
        # snapshot installs change what they depend on (channel rows, lists, subscribers), so
        # the cache is dropped at each of those; sends only read it. Saves a channel decode
        # and two or three RocksDB reads per send on every replica.
        self._permits: dict[tuple[int, str, str, bool, bool], ReasonCode] = {}

    # --- StateMachine protocol --------------------------------------------------------------

    def applied_index(self) -> int:
        return self.store.applied_index()

    def checkpoint(self, path: str) -> None:
        self.store.checkpoint(path)

    def install(self, path: str) -> None:
        self._permits.clear()
        self.store.install(path)

    def apply(self, index: int, command: bytes) -> bytes:
        if index <= self.store.applied_index():
            return b""  # replayed after a restart: already in the store
        cmd = pb.Command.FromString(command)
        wb = self.store.batch()
        body = cmd.WhichOneof("body")
        ctx = ApplyContext(self.group, self.store, wb, cmd.time_ms)
        if body == "send":
            result = self._apply_sends(cmd.send, ctx).SerializeToString()
        elif body == "meta":
            self._permits.clear()
            try:
                result = self._apply_meta(cmd.meta, ctx).SerializeToString()
            except Exception as e:
                # A bug in a domain module must not wedge the group (Raft would apply the
                # entry again and again): every replica runs the same code on the same
                # command, so every one drops the op's writes alike and answers SYSTEM_ERROR.
                log.exception("metadata op failed in apply", group=self.group)
                wb = self.store.batch()
                result = pb.MetaResult(
                    reason=ReasonCode.SYSTEM_ERROR, detail=f"operation failed: {type(e).__name__}"
                ).SerializeToString()
        else:
            result = b""  # a read barrier changes nothing
        wb.set_applied(index)
        self.store.write(wb)
        self.applied_commands += 1
        return result

    # --- sends ------------------------------------------------------------------------------

    def _apply_sends(self, batch: pb.SendBatch, ctx: ApplyContext) -> pb.SendBatchResult:
        result = pb.SendBatchResult()
        heads: dict[tuple[int, str], int] = {}
        seen: dict[_DedupeKey, pb.SendOutcome] = {}
        last_id = self.store.last_message_id()
        for item in batch.items:
            outcome = result.outcomes.add()
            if item.flags & SYNC_ONCE:
                item.channel_id = cmd_of(item.channel_id)  # stored in the command twin
            no_persist = online_only(item.channel_type, item.flags)
            key = (item.channel_type, item.channel_id, item.from_uid, item.client_msg_no)
            malformed = request_problem(
                item.client_msg_no,
                item.topic,
                item.stream_no,
                source_of(item.channel_id),
                item.from_uid,
            )
            # Dedupe first: a retry of a message that committed gets its ids back even if the
            # sender lost the permission since (else a "refused" message would exist).
            if item.client_msg_no and not self.skip_dedupe and not no_persist and not malformed:
                earlier = self._earlier_outcome(key, seen)
                if earlier is not None:
                    outcome.CopyFrom(earlier)
                    outcome.duplicate = True
                    continue
            reason = self._refusal(item, malformed)
            if reason != ReasonCode.SUCCESS:
                outcome.reason = reason
                continue
            seq = 0 if no_persist else self._next_seq(item, heads)
            previous_id, last_id = last_id, next_message_id(last_id, ctx.time_ms, self.group)
            # Clients and the id index order messages by id: a smaller one would sort a new
            # message before the ones it follows.
            invariant(last_id > previous_id, "message ids increase", previous_id, last_id)
            record = _new_record(item, last_id, seq, ctx.time_ms, no_persist)
            if seq:
                self._store_message(ctx, item, record)
            outcome.reason = ReasonCode.SUCCESS
            outcome.message_id = record.message_id
            outcome.message_seq = seq
            if item.client_msg_no and not no_persist:
                seen[key] = pb.SendOutcome(
                    reason=ReasonCode.SUCCESS, message_id=record.message_id, message_seq=seq
                )
            result.committed.append(record_to_pb(record))
        # The pipeline answers send i with outcome i: one missing would answer the wrong sender.
        invariant(
            len(result.outcomes) == len(batch.items), "one outcome per send", len(batch.items)
        )
        ctx.wb.set_last_message_id(last_id)
        return result

    def _earlier_outcome(
        self, key: _DedupeKey, seen: dict[_DedupeKey, pb.SendOutcome]
    ) -> pb.SendOutcome | None:
        """The outcome of the send this one retries: earlier in this batch, or committed."""
        earlier = seen.get(key)
        if earlier is None:
            found = self.store.get_dedupe(*key)
            if found is not None:
                earlier = pb.SendOutcome(
                    reason=ReasonCode.SUCCESS, message_id=found[0], message_seq=found[1]
                )
        return earlier

    def _refusal(self, item: pb.SendItem, malformed: str | None) -> ReasonCode:
        """Why the send is refused, or ``SUCCESS``: its shape, then its channel's rules."""
        if malformed:
            return ReasonCode.PAYLOAD_DECODE_ERROR
        if person_channel_problem(source_of(item.channel_id), item.channel_type, item.from_uid):
            return ReasonCode.CHANNEL_ID_ERROR
        return self._check(item)

    def _next_seq(self, item: pb.SendItem, heads: dict[tuple[int, str], int]) -> int:
        """The channel's next seq; ``heads`` carries it from one send of the batch to the next
        (the batch's writes cannot be read back)."""
        head_key = (item.channel_type, item.channel_id)
        head = heads.get(head_key)
        if head is None:
            head = self.store.head_seq(*head_key)
        seq = heads[head_key] = head + 1
        return seq

    def _store_message(self, ctx: ApplyContext, item: pb.SendItem, record: MessageRecord) -> None:
        """Write a persisted message and what apply keeps about it, in the same batch."""
        ctx.wb.append_message(record)
        # Indexes every stored message; rows only where conversations exist.
        conversations.on_message(ctx, record)
        message_ops.on_message(ctx, record)
        if is_cmd(item.channel_id):
            uids = command_sync.recipients_of(self.store, item, item.channel_id)
            command_sync.enqueue(ctx, record, uids)

    def _check(self, item: pb.SendItem) -> ReasonCode:
        channel_id = source_of(item.channel_id)  # a command twin is checked as its source
        if item.subscribers:
            # An explicit recipient list addresses people, not a channel: only the app backend
            # (HTTP API) may send one, and no channel check applies (WuKongIM v3 does the same).
            return ReasonCode.SUCCESS if item.trusted else ReasonCode.NOT_ALLOW_SEND
        key = (item.channel_type, channel_id, item.from_uid, item.system, item.trusted)
        reason = self._permits.get(key)
        if reason is None:
            if channel_id != item.channel_id:
                source = pb.SendItem()
                source.CopyFrom(item)
                source.channel_id = channel_id
                item = source
            reason = permissions.send_permission(self.store, item)
            if len(self._permits) >= _PERMIT_CACHE_SIZE:
                self._permits.clear()
            self._permits[key] = reason
        return reason

    # --- metadata ---------------------------------------------------------------------------

    def _apply_meta(self, op: pb.MetaOp, ctx: ApplyContext) -> pb.MetaResult:
        which = op.WhichOneof("op")
        if which == "set_device":
            d = op.set_device
            # A re-hash at login replaces only the record it was checked against: the app
            # may have set another token since (usertokens.py).
            if not d.replaces or still_the_same(
                self.store.get_device(d.uid, d.device_flag), d.replaces
            ):
                ctx.wb.put_device(d.uid, d.device_flag, record_of(d))
            return pb.MetaResult(reason=ReasonCode.SUCCESS)
        if which == "channel":
            result = self._apply_channel(op.channel, ctx.wb)
            if result.reason == ReasonCode.SUCCESS:
                conversations.on_channel_update(ctx, op.channel)
            return result
        handler = _META_HANDLERS.get(which or "")
        if handler is not None:
            return handler(ctx, getattr(op, which or ""))
        return pb.MetaResult(reason=ReasonCode.SYSTEM_ERROR, detail=f"unknown op {which}")

    def _apply_channel(self, c: pb.ChannelUpdate, wb: Batch) -> pb.MetaResult:
        info = self.store.get_channel(c.channel_type, c.channel_id)
        if info is None:
            if c.must_exist:
                return pb.MetaResult(
                    reason=ReasonCode.CHANNEL_NOT_EXIST,
                    detail=f"channel {c.channel_id} does not exist",
                )
            info = ChannelInfo(c.channel_id, c.channel_type)
        for name in ("ban", "disband", "send_ban", "allow_stranger", "large"):
            if c.HasField(name):
                setattr(info, name, getattr(c, name))
        wb.put_channel(info)
        remove = list(c.remove_subscribers)
        if c.reset_subscribers:
            remove = self.store.subscribers(c.channel_type, c.channel_id)
        if remove:
            wb.remove_subscribers(c.channel_type, c.channel_id, remove)
        if c.add_subscribers:
            wb.add_subscribers(c.channel_type, c.channel_id, list(c.add_subscribers))
        return pb.MetaResult(reason=ReasonCode.SUCCESS)


_META_HANDLERS = {
    **channel_state.META,
    **conversations.META,
    **message_ops.META,
    **command_sync.META,
    **streams.META,
    **imports.META,
}


def _new_record(
    item: pb.SendItem, message_id: int, seq: int, time_ms: int, no_persist: bool
) -> MessageRecord:
    """The message a send stores (seq 0: an online-only one, delivered but not stored)."""
    return MessageRecord(
        message_id=message_id,
        message_seq=seq,
        timestamp_ms=time_ms,
        channel_id=item.channel_id,
        channel_type=item.channel_type,
        from_uid=item.from_uid,
        client_msg_no=item.client_msg_no,
        payload=item.payload,
        setting=item.setting,
        flags=(item.flags & _PERSISTED_FLAGS) | (NO_PERSIST if no_persist else 0),
        expire=item.expire,
        topic=item.topic,
        stream_no=item.stream_no,
    )


def record_to_pb(r: MessageRecord) -> pb.Message:
    return pb.Message(
        message_id=r.message_id,
        message_seq=r.message_seq,
        timestamp_ms=r.timestamp_ms,
        channel_id=r.channel_id,
        channel_type=r.channel_type,
        from_uid=r.from_uid,
        client_msg_no=r.client_msg_no,
        payload=r.payload,
        setting=r.setting,
        flags=r.flags,
        expire=r.expire,
        topic=r.topic,
        stream_no=r.stream_no,
    )


def record_from_pb(m: pb.Message) -> MessageRecord:
    return MessageRecord(
        message_id=m.message_id,
        message_seq=m.message_seq,
        timestamp_ms=m.timestamp_ms,
        channel_id=m.channel_id,
        channel_type=m.channel_type,
        from_uid=m.from_uid,
        client_msg_no=m.client_msg_no,
        payload=m.payload,
        setting=m.setting,
        flags=m.flags,
        expire=m.expire,
        topic=m.topic,
        stream_no=m.stream_no,
    )
