"""Per-user conversation rows, read floors and unread counts, kept in the channel's slot group.

A user's row for a channel lives in the channel's group (CF ``convs``), so it is written in the
same command as the messages that change it and no write ever spans two groups; a user's whole
list is a scatter-gather read over every group (``Router.read_every_group``).

Key layout of ``convs``:

* ``u`` + uid + NUL + channel key -> the row (JSON, ``Row``);
* ``N`` + channel key + seq (8 bytes) -> how many *countable* messages the channel holds up to
  and including seq (8 bytes): unread is a difference of two of these, O(1) whatever the gap;
* ``A`` + channel key -> the seq of the channel's latest ``mention.all`` message;
* ``M`` + channel key + uid + NUL + seq (8 bytes) -> b"": message seq named uid in
  ``mention.uids`` (uid "" for ``mention.all``), written with the message and deleted when the
  message is erased, so that "@me" can fall back to an older mention when a newer one is gone.

Countable = header flag RED_DOT set and SYNC_ONCE not set. Unread = countable messages above
max(read floor, deleted-to, cleared-to) and at most the head (or the cap of a removed member),
plus an explicit ``setUnread`` override. "@me" = a message that still exists (not deleted for
everyone, not expired, not revoked) above that same base and at most the top names the user or
everyone. See ``docs/messaging.md``. The queries that read the rows are in
``conversation_reads.py``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode

from .. import safejson
from ..channels import person_parties
from ..command_channels import RED_DOT, SYNC_ONCE, is_cmd
from ..payload_conventions import MAX_DEPTH as PAYLOAD_MAX_DEPTH
from ..storage import MessageRecord, Store
from ..storage.keys import SEP, channel_key
from . import msgindex, msgx, views
from .context import ApplyContext

_ROW = b"u"
_COUNT = b"N"
_MENTION_ALL = b"A"
_MENTIONS = b"M"
_EVERYONE = ""
"""The uid under which ``mention.all`` messages are indexed (no uid is empty)."""
_MENTION_PAGE = 64
_U64 = struct.Struct(">Q")

GROUP_LIKE = frozenset(
    int(t)
    for t in (
        ChannelType.GROUP,
        ChannelType.CUSTOMER_SERVICE,
        ChannelType.COMMUNITY,
        ChannelType.COMMUNITY_TOPIC,
        ChannelType.INFO,
        ChannelType.VISITORS,
        ChannelType.AGENT,
        ChannelType.AGENT_GROUP,
    )
)
"""Channel types whose conversations come from the subscriber list."""
NO_CONVERSATION = frozenset(int(t) for t in (ChannelType.DATA, ChannelType.TEMP, ChannelType.LIVE))
"""Channel types that never show up in a conversation list (as in WuKongIM v2)."""
MAX_RECENTS = 100
MAX_MENTION_UIDS = 1000


@dataclass
class Row:
    """One user's state in one conversation. Seqs are the channel's message seqs."""

    channel_id: str
    channel_type: int
    read: int = 0
    """Read floor: messages at or below it are read. Never moves back."""
    deleted: int = 0
    """Conversation deleted up to here: hidden from the list until a newer message arrives."""
    cleared: int = 0
    """Messages at or below it are hidden from this user (CLEAR_MESSAGES)."""
    override: int | None = None
    """``setUnread``: this many unread as of ``override_at``, plus countable messages after."""
    override_at: int = 0
    mention: int = 0
    """The last seq whose ``mention.uids`` named this user (when it still exists it answers
    "@me" with one read; the ``M`` index has the older ones)."""
    cap: int | None = None
    """Set when the user left a group-like channel: the head then; later messages are not theirs."""
    updated_ms: int = 0
    """Leader time of the last conversation operation (part of the row's sync version)."""

    def encode(self) -> bytes:
        # The fields in declaration order, as asdict would give them (every replica writes the
        # same bytes) without its deep copy, which was a fifth of the cost of applying a send.
        return json.dumps(self.__dict__, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Row:
        return cls(**json.loads(raw))

    def top(self, head: int) -> int:
        """The newest seq that belongs to this user's view of the channel."""
        return head if self.cap is None else min(self.cap, head)

    def base(self) -> int:
        return max(self.read, self.deleted, self.cleared)

    def mark_read(self, seq: int) -> None:
        if seq > self.read:
            self.read = seq
        self.override = None


def rows_prefix(uid: str) -> bytes:
    """The prefix of every row of ``uid`` (in this group)."""
    return _ROW + uid.encode() + SEP


def row_key(uid: str, ck: bytes) -> bytes:
    return rows_prefix(uid) + ck


def _count_key(ck: bytes, seq: int) -> bytes:
    return _COUNT + ck + _U64.pack(seq)


# --- reads that apply and queries share -----------------------------------------------------


def count_at(store: Store, ck: bytes, seq: int) -> int:
    """Countable messages with seq <= ``seq`` (0 for seq 0)."""
    if seq <= 0:
        return 0
    raw = store.get_raw("convs", _count_key(ck, seq))
    return 0 if raw is None else int(_U64.unpack(raw)[0])


def unread_of(row: Row, top: int, count: Callable[[int], int], floor: int = 0) -> int:
    """Unread of ``row`` when ``top`` is its newest seq; ``count(seq)`` as ``count_at``.
    Messages at or below ``floor`` (deleted by range or retention) never count."""

    def span(lo: int) -> int:
        return count(top) - count(lo) if top > lo else 0

    base = max(row.base(), floor)
    if row.override is not None:
        unread = row.override + span(max(base, row.override_at))
        # An unread set by hand cannot survive the deletion of the messages it was about.
        return min(unread, span(floor)) if floor else unread
    return span(base)


def stored_unread(store: Store, row: Row, top: int, ck: bytes) -> int:
    """``unread_of`` against the store: counters and the channel's deletion floor."""
    return unread_of(row, top, partial(count_at, store, ck), msgx.floor(store, ck))


def mention_all_seq(store: Store, ck: bytes) -> int:
    raw = store.get_raw("convs", _MENTION_ALL + ck)
    return 0 if raw is None else int(_U64.unpack(raw)[0])


def _mention_prefix(ck: bytes, uid: str) -> bytes:
    return _MENTIONS + ck + uid.encode() + SEP


def _indexed_mentions(store: Store, ck: bytes, uid: str, after: int) -> Iterator[int]:
    """Seqs above ``after`` whose message named ``uid`` ("" = everyone), oldest first, read a
    page at a time."""
    prefix = _mention_prefix(ck, uid)
    start = prefix + _U64.pack(after + 1)
    while True:
        page = store.prefix_items("convs", prefix, limit=_MENTION_PAGE, start=start)
        for key, _ in page:
            yield int(_U64.unpack_from(key, len(prefix))[0])
        if len(page) < _MENTION_PAGE:
            return
        start = page[-1][0] + b"\x00"


def _still_there(store: Store, row: Row, ck: bytes, seq: int, now_ms: int) -> bool:
    """The message at ``seq`` exists for everyone: not erased, not expired, not revoked."""
    r = store.get_message(row.channel_type, row.channel_id, seq)
    if r is None or views.is_expired(r, now_ms):
        return False
    return store.get_raw(msgx.CF, msgx.seq_key(msgx.REVOKE, ck, seq)) is None


def mentioned(store: Store, uid: str, row: Row, ck: bytes, top: int, now_ms: int) -> bool:
    """Whether ``uid`` has an "@me": a message in (base, top] that still exists and named
    ``uid`` in ``mention.uids`` or had ``mention.all`` (base includes the deletion floor).

    Cost: no read beyond the floor and the ``A`` seq when no mention was ever recorded above
    the base (most rows); one message read when the newest mention is still there; otherwise
    a scan of this user's (and everyone's) mention index from the base up, which stops at the
    first mention still there: the price of a row whose newest mentions were deleted."""
    lo = max(row.base(), msgx.floor(store, ck))
    all_seq = mention_all_seq(store, ck)
    if max(row.mention, all_seq) <= lo:
        return False
    for seq in sorted({row.mention, all_seq}, reverse=True):
        if lo < seq <= top and _still_there(store, row, ck, seq, now_ms):
            return True
    for who in (uid, _EVERYONE):
        for seq in _indexed_mentions(store, ck, who, lo):
            if seq > top:
                break
            if _still_there(store, row, ck, seq, now_ms):
                return True
    return False


def load_row(store: Store, uid: str, channel_type: int, channel_id: str) -> Row | None:
    raw = store.get_raw("convs", row_key(uid, channel_key(channel_type, channel_id)))
    return None if raw is None else Row.decode(raw)


def cleared_to(store: Store, uid: str, channel_type: int, channel_id: str) -> int:
    """The seq up to which ``uid`` cleared this conversation (CLEAR_MESSAGES): messages at or
    below it are hidden from that user. 0 when never cleared."""
    row = load_row(store, uid, channel_type, channel_id)
    return 0 if row is None else row.cleared


# --- apply ----------------------------------------------------------------------------------


def _get(ctx: ApplyContext, uid: str, ck: bytes) -> Row | None:
    key = ("conv", uid, ck)
    if key in ctx.cache:
        row: Row | None = ctx.cache[key]
        return row
    raw = ctx.store.get_raw("convs", row_key(uid, ck))
    return None if raw is None else Row.decode(raw)


def _put(ctx: ApplyContext, uid: str, ck: bytes, row: Row) -> None:
    ctx.cache[("conv", uid, ck)] = row
    ctx.wb.put_raw("convs", row_key(uid, ck), row.encode())


def is_countable(flags: int) -> bool:
    return bool(flags & RED_DOT) and not flags & SYNC_ONCE


def on_message(ctx: ApplyContext, record: MessageRecord, *, imported: bool = False) -> None:
    """Runs in apply for every stored message, in the same write batch. An ``imported`` message
    (history, ``groups/imports.py``) counts as unread for no one and mentions no one: it adds 0
    to the running count, so every row's unread stays what it was whatever its read floor, and
    it moves no read floor (that would drop a ``setUnread`` override). Person rows are created
    as for any message, so the conversation shows up with its history."""
    msgindex.index_message(ctx, record)
    ctype, cid, seq = record.channel_type, record.channel_id, record.message_seq
    if ctype in NO_CONVERSATION or is_cmd(cid):
        return  # command twins are synced apart (groups/command_sync.py)
    ck = channel_key(ctype, cid)
    countable = is_countable(record.flags) and not imported
    # Seqs of a channel are contiguous, so the running count continues from seq - 1 (from the
    # cache when that message is in this same batch).
    previous = ctx.cache.get(("count", ck))
    if previous is None:
        previous = count_at(ctx.store, ck, seq - 1)
    total = previous + (1 if countable else 0)
    ctx.cache[("count", ck)] = total
    ctx.wb.put_raw("convs", _count_key(ck, seq), _U64.pack(total))

    own = "" if imported else record.from_uid  # no uid is empty
    if ctype == ChannelType.PERSON:
        for uid in dict.fromkeys(person_parties(cid)):
            row = _get(ctx, uid, ck)
            if row is None or uid == own:
                row = row or Row(cid, ctype)
                if uid == own:
                    row.mark_read(seq)  # one's own messages are never unread
                _put(ctx, uid, ck, row)
    elif own:
        row = _get(ctx, own, ck)
        if row is not None and row.cap is None:
            row.mark_read(seq)
            _put(ctx, own, ck, row)
    if countable and b'"mention"' in record.payload:
        _on_mention(ctx, ck, seq, record.payload)


def _mentions_of(payload: bytes) -> tuple[bool, list[str]]:
    """(mention.all, the uids of mention.uids) of ``{"mention": {"uids": [...], "all": 0|1}}``
    in a JSON payload; anything else is not a mention (payloads are the app's business, so a
    malformed one is simply ignored). The depth limit is the front door's: a payload too deep
    to parse safely is no mention on any replica, whatever stack depth the apply runs at."""
    try:
        doc = safejson.loads(payload, PAYLOAD_MAX_DEPTH)
    except safejson.JsonRefused:
        return False, []
    mention = doc.get("mention") if isinstance(doc, dict) else None
    if not isinstance(mention, dict):
        return False, []
    uids = mention.get("uids")
    named = [
        uid
        for uid in (uids[:MAX_MENTION_UIDS] if isinstance(uids, list) else [])
        if isinstance(uid, str) and uid and SEP.decode() not in uid
    ]
    return mention.get("all") in (1, True), named


def _on_mention(ctx: ApplyContext, ck: bytes, seq: int, payload: bytes) -> None:
    everyone, uids = _mentions_of(payload)
    if everyone:
        ctx.wb.put_raw("convs", _MENTION_ALL + ck, _U64.pack(seq))
        ctx.wb.put_raw("convs", _mention_prefix(ck, _EVERYONE) + _U64.pack(seq), b"")
    for uid in uids:
        row = _get(ctx, uid, ck)
        if row is not None and row.cap is None:
            row.mention = seq
            _put(ctx, uid, ck, row)
            ctx.wb.put_raw("convs", _mention_prefix(ck, uid) + _U64.pack(seq), b"")


def forget_mentions(ctx: ApplyContext, record: MessageRecord) -> None:
    """A message is being erased (range deletion, retention, expiry): drop the mention index
    entries it wrote. Cost: the entries of this one message (its payload is parsed only when it
    contains "mention"), never a walk over the channel's members."""
    if not is_countable(record.flags) or b'"mention"' not in record.payload:
        return
    everyone, uids = _mentions_of(record.payload)
    ck = channel_key(record.channel_type, record.channel_id)
    seq = _U64.pack(record.message_seq)
    for uid in ([_EVERYONE] if everyone else []) + uids:
        ctx.wb.delete_raw("convs", _mention_prefix(ck, uid) + seq)


def on_channel_update(ctx: ApplyContext, c: pb.ChannelUpdate) -> None:
    """A ``ChannelUpdate`` applied (its subscriber writes are in ``ctx.wb``, so the store still
    holds the subscribers from before it)."""
    if c.channel_type not in GROUP_LIKE:
        return
    removed = list(c.remove_subscribers)
    if c.reset_subscribers:
        removed = ctx.store.subscribers(c.channel_type, c.channel_id)
    on_subscribers(ctx, c.channel_type, c.channel_id, list(c.add_subscribers), removed)


def on_subscribers(
    ctx: ApplyContext, channel_type: int, channel_id: str, added: list[str], removed: list[str]
) -> None:
    """Rows for group-like channels start when a uid joins and are capped at the head when it
    leaves (a uid both removed and added, as in a reset, stays a member)."""
    if channel_type not in GROUP_LIKE:
        return
    ck = channel_key(channel_type, channel_id)
    head = ctx.store.head_seq(channel_type, channel_id)
    for uid in removed:
        row = _get(ctx, uid, ck)
        if row is not None and row.cap is None:
            row.cap = head
            _put(ctx, uid, ck, row)
    for uid in added:
        row = _get(ctx, uid, ck)
        if row is None:
            # History before joining is readable but not unread.
            _put(ctx, uid, ck, Row(channel_id, channel_type, read=head))
        elif row.cap is not None:
            if head > row.cap:
                # Back after a gap: keep the unread the user had when they left, and let the
                # messages of the gap (not theirs) not count.
                left_unread = stored_unread(ctx.store, row, row.cap, ck)
                row.override, row.override_at = left_unread, head
            row.cap = None
            _put(ctx, uid, ck, row)


def _apply_op(ctx: ApplyContext, op: pb.ConversationOp) -> pb.MetaResult:
    ctype, cid = op.channel_type, op.channel_id
    ck = channel_key(ctype, cid)
    row = _get(ctx, op.uid, ck)
    if row is None:
        # No conversation yet (no message, not a subscriber): nothing to change.
        return pb.MetaResult(reason=ReasonCode.SUCCESS, data=b'{"exists":false}')
    top = row.top(ctx.store.head_seq(ctype, cid))
    seq = min(op.message_seq, top) if op.message_seq else top
    if op.kind == pb.ConversationOp.CLEAR_UNREAD:
        row.mark_read(seq)
    elif op.kind == pb.ConversationOp.SET_UNREAD:
        row.override, row.override_at = op.unread, top
    elif op.kind == pb.ConversationOp.DELETE:
        row.deleted = max(row.deleted, seq)
    elif op.kind == pb.ConversationOp.CLEAR_MESSAGES:
        row.cleared = max(row.cleared, seq)
    else:
        return pb.MetaResult(reason=ReasonCode.SYSTEM_ERROR, detail=f"unknown kind {op.kind}")
    row.updated_ms = ctx.time_ms
    _put(ctx, op.uid, ck, row)
    unread = stored_unread(ctx.store, row, top, ck)
    data = {"exists": True, "readed_to_msg_seq": row.read, "unread": unread}
    return pb.MetaResult(reason=ReasonCode.SUCCESS, data=json.dumps(data).encode())


META: dict[str, Callable[[ApplyContext, Any], pb.MetaResult]] = {"conversation": _apply_op}
