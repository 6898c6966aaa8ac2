"""What a reconnecting session has delivered: the last seq per channel (to resume from and to
drop messages at or below it) and a bounded set of recent message ids (for messages without a
seq, and a second line of defence). Pure bookkeeping, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict

from .models import Message

ChannelKey = tuple[str, int]
"""(channel_id in the session user's view, channel_type)."""

MAX_RECENT_IDS = 10_000
MAX_CHANNELS = 10_000


class Delivered:
    """Memory is bounded: the ``max_ids`` most recent message ids and the ``max_channels``
    channels used most recently; a channel pushed out is no longer resumed after a reconnect."""

    def __init__(self, max_ids: int = MAX_RECENT_IDS, max_channels: int = MAX_CHANNELS) -> None:
        self.max_ids = max_ids
        self.max_channels = max_channels
        self._ids: OrderedDict[int, None] = OrderedDict()
        self._last_seq: OrderedDict[ChannelKey, int] = OrderedDict()

    def last_seq(self, key: ChannelKey) -> int | None:
        """The highest seq delivered (or followed from) in the channel; None if not tracked."""
        return self._last_seq.get(key)

    def channels(self) -> list[tuple[ChannelKey, int]]:
        """Every tracked channel with its last seq, least recently used first."""
        return list(self._last_seq.items())

    def follow(self, key: ChannelKey, after_seq: int) -> None:
        """Track a channel from ``after_seq`` (messages above it will be delivered). Never
        moves a tracked channel back: what was delivered stays delivered."""
        self._set_seq(key, max(after_seq, self._last_seq.get(key, 0)))

    def accept(self, m: Message) -> bool:
        """True when ``m`` is new, recording it; False for a duplicate."""
        if m.message_id in self._ids:
            return False
        if self._seq_tracked(m):
            last = self._last_seq.get(m.channel)
            if last is not None and m.message_seq <= last:
                return False
            self._set_seq(m.channel, m.message_seq)
        self._remember(m.message_id)
        return True

    def gap(self, m: Message) -> tuple[int, int] | None:
        """(first missing seq, ``m``'s seq) when messages of ``m``'s channel are missing between
        the last delivered one and ``m``; None when there is no gap or nothing to compare."""
        if not self._seq_tracked(m):
            return None
        last = self._last_seq.get(m.channel)
        if last is None or m.message_seq <= last + 1:
            return None
        return last + 1, m.message_seq

    def sent(self, key: ChannelKey, message_id: int, message_seq: int) -> None:
        """The session's own message: never delivered back to it. It starts the tracking of a
        channel (so that replies missed while disconnected are fetched), and moves the last
        seq only when it directly follows it: an earlier message of someone else may still be
        on its way, and a hole left here is filled from the log at the next message."""
        self._remember(message_id)
        last = self._last_seq.get(key)
        if message_seq > 0 and (last is None or message_seq == last + 1):
            self._set_seq(key, message_seq)

    @staticmethod
    def _seq_tracked(m: Message) -> bool:
        # Messages that are not stored have seq 0; command (sync_once) messages live in the
        # channel's command twin, which is read with /message/sync, not by channel seq.
        return m.message_seq > 0 and not m.sync_once

    def _set_seq(self, key: ChannelKey, seq: int) -> None:
        self._last_seq[key] = seq
        self._last_seq.move_to_end(key)
        while len(self._last_seq) > self.max_channels:
            self._last_seq.popitem(last=False)

    def _remember(self, message_id: int) -> None:
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)
