"""Command (``sync_once``) channels: every channel has a command twin ``<channel_id>____cmd`` of
the same type, where its sync_once messages are stored apart from the chat history.

The twin lives in the same slot group as its source (``Router.group_of`` strips the suffix),
so that permission checks read the source channel's state in the same apply, and its recipients
are the source channel's.
"""

from __future__ import annotations

import hashlib

from proto.wkproto import ChannelType, HeaderFlag

from .channels import CMD_SUFFIX

TEMP_PREFIX = "tmp"
"""Temp channels (type 8) made for HTTP sends with an explicit ``subscribers`` list."""

# Header flag bits as plain ints for apply's per-message tests: IntFlag arithmetic builds enum
# members, a measurable cost per applied send (ADR 009).
NO_PERSIST = int(HeaderFlag.NO_PERSIST)
RED_DOT = int(HeaderFlag.RED_DOT)
SYNC_ONCE = int(HeaderFlag.SYNC_ONCE)
_LIVE = int(ChannelType.LIVE)


def is_cmd(channel_id: str) -> bool:
    return channel_id.endswith(CMD_SUFFIX)


def source_of(channel_id: str) -> str:
    """The channel a command twin belongs to (any other id is its own source)."""
    return channel_id[: -len(CMD_SUFFIX)] if is_cmd(channel_id) else channel_id


def cmd_of(channel_id: str) -> str:
    return channel_id if is_cmd(channel_id) else channel_id + CMD_SUFFIX


def temp_channel_id(uids: list[str]) -> str:
    """A deterministic temp channel id for a recipient list: the same set of uids (in any order,
    with repeats) always maps to the same channel, so its messages form one history."""
    joined = "\x00".join(sorted(set(uids))).encode()  # uids cannot contain NUL
    return TEMP_PREFIX + hashlib.blake2b(joined, digest_size=12).hexdigest()


_NO_CONVERSATION_TYPES = {int(ChannelType.DATA), int(ChannelType.TEMP), int(ChannelType.LIVE)}


def makes_conversations(channel_type: int, channel_id: str) -> bool:
    """Whether a stored message of this channel updates its recipients' conversations: not for
    data, temp and live channels (as WuKongIM v2), nor for command twins (synced apart)."""
    return channel_type not in _NO_CONVERSATION_TYPES and not is_cmd(channel_id)


def online_only(channel_type: int, flags: int) -> bool:
    """A message that is delivered to who is online and never stored (seq 0): ``no_persist``
    sends and every message of a live channel."""
    return bool(flags & NO_PERSIST) or channel_type == _LIVE
