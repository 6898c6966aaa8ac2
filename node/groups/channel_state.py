"""Channel lists (deny/allow), user facts and channel deletion, as replicated state.

Issue 5 (channels and permissions) fills this in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb

from ..storage import Store
from .context import ApplyContext

META: dict[str, Callable[[ApplyContext, Any], pb.MetaResult]] = {}
QUERIES: dict[str, Callable[[Store, dict[str, Any]], Any]] = {}
