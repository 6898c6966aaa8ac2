"""Operations on stored messages: revoke, edit, per-user delete, read receipts, retention; and
how stored messages are presented to a reader.

Issue 5 (message operations) fills this in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb

from ..storage import MessageRecord, Store
from .context import ApplyContext

META: dict[str, Callable[[ApplyContext, Any], pb.MetaResult]] = {}
QUERIES: dict[str, Callable[[Store, dict[str, Any]], Any]] = {}


def present(store: Store, records: list[MessageRecord], viewer: str) -> list[dict[str, Any]]:
    """The stored messages as ``viewer`` sees them (``viewer`` "" = no particular user)."""
    from .reads import message_json

    return [message_json(r) for r in records]
