"""A node-side cache of user facts, for the send pre-check (``node/send_checks.py``).

The facts of a uid (its person channel's ``ban``, ``send_ban``, ``allow_stranger``, its deny
and allow lists, its system flag) live in the uid's slot group, which is usually not the slot
group of the channel a message goes to. Reading them on every send would cost a read barrier
in another group per message, so each node caches them for ``TTL_S``.

Freshness: every HTTP handler that changes user facts calls ``changed`` after the change
committed and before it answers. ``changed`` drops the local entry and sends ``Invalidate`` to
every other node, so a send that starts after the answer, on any node that got the call,
loads the new facts. A node that cannot be reached (down, partitioned, slow beyond the peer
RPC timeout) keeps its entry until the TTL runs out: the TTL bounds how long such a node may
act on old facts. A restarted node starts with an empty cache.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

from proto.raftchat.peer.v1 import peer_pb2 as pb

from .router import Router

TTL_S = 3.0
MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class Facts:
    uid: str
    ban: bool = False
    send_ban: bool = False
    allow_stranger: bool = False
    deny: frozenset[str] = frozenset()
    allow: frozenset[str] = frozenset()
    system: bool = False

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Facts:
        return cls(
            uid=doc["uid"],
            ban=bool(doc["ban"]),
            send_ban=bool(doc["send_ban"]),
            allow_stranger=bool(doc["allow_stranger"]),
            deny=frozenset(doc["deny"]),
            allow=frozenset(doc["allow"]),
            system=bool(doc["system"]),
        )


class UserFacts:
    def __init__(self, router: Router, ttl_s: float = TTL_S) -> None:
        self._router = router
        self._ttl_s = ttl_s
        self._entries: collections.OrderedDict[str, tuple[float, Facts]] = collections.OrderedDict()
        # Loads in flight per uid, and uids invalidated while one was in flight: such a load
        # may have read the facts before the change, so its result is used once, not cached.
        self._loading: dict[str, int] = {}
        self._spoiled: set[str] = set()

    async def get(self, uid: str) -> Facts:
        now = trio.current_time()
        entry = self._entries.get(uid)
        if entry is not None and entry[0] > now:
            return entry[1]
        self._loading[uid] = self._loading.get(uid, 0) + 1
        try:
            doc = await self._router.read(uid, {"q": "user_facts", "uid": uid})
        finally:
            self._loading[uid] -= 1
            left = self._loading[uid]
            if not left:
                del self._loading[uid]
        facts = Facts.from_json(doc)
        if uid in self._spoiled:
            if not left:
                self._spoiled.discard(uid)
            return facts
        self._entries[uid] = (now + self._ttl_s, facts)
        self._entries.move_to_end(uid)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return facts

    def drop(self, uids: Iterable[str]) -> None:
        for uid in uids:
            self._entries.pop(uid, None)
            if uid in self._loading:
                self._spoiled.add(uid)

    async def changed(self, uids: list[str]) -> None:
        """The facts of ``uids`` changed (committed): drop them here and on every other node
        that answers in time."""
        self.drop(uids)
        await self._router.call_other_nodes("Invalidate", pb.InvalidateRequest(uids=uids))

    async def rpc(self, req: pb.InvalidateRequest) -> pb.InvalidateReply:
        """The ``Invalidate`` peer call."""
        self.drop(req.uids)
        return pb.InvalidateReply()
