"""Per-user conversation rows, read floors and unread counts, kept in the channel's slot group.

Issue 5 (conversations and unread) fills this in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb

from ..storage import MessageRecord, Store
from .context import ApplyContext

META: dict[str, Callable[[ApplyContext, Any], pb.MetaResult]] = {}
QUERIES: dict[str, Callable[[Store, dict[str, Any]], Any]] = {}


def on_message(ctx: ApplyContext, record: MessageRecord, item: pb.SendItem) -> None:
    """Runs in apply for every stored message, in the same write batch."""


def cleared_to(store: Store, uid: str, channel_type: int, channel_id: str) -> int:
    """The seq up to which ``uid`` cleared this conversation (CLEAR_MESSAGES): messages at or
    below it are hidden from that user. 0 when never cleared."""
    return 0
