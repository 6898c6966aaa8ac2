"""The multi-device policy across the cluster, not just within one node.

A uid's sessions may live on any node: a client picks a node, or ``/route`` spreads users over
them. When a session logs in, its node applies the policy (``node/sessions.py``) to the uid's
sessions on the same platform everywhere:

1. the node's own registry evicts local sessions at once, before the CONNACK;
2. then, without holding up the login, it asks every other node for the uid's sessions on that
   platform (``Sessions``), runs the same pure policy over all of them, and closes or kicks the
   evicted ones where they live (``Kick`` with their connection ids).

Only sessions older than the new one are considered: a newer one is its own login's business,
and that login, seeing ours as older, evicts ours if the policy says so. Two logins at the
same moment on two nodes can each miss the other (neither is registered when the other asks);
both then stay, as if the limit were one higher, until one of them reconnects.

A node that does not answer within ``QUERY_TIMEOUT_S`` (dead, paused, cut off) is skipped: its
sessions of the uid cannot be kicked now, and the login is never held up by it. Its clients
lose their connection with it anyway, and reconnecting applies the policy again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ReasonCode

from .log import get_logger
from .sessions import DeviceLimits, SessionLike, SessionRegistry, evictions

log = get_logger("presence")

QUERY_TIMEOUT_S = 1.0
"""How long a login's node waits for the other nodes' session lists."""
KICK_REASON = "login in other device"

CallEach = Callable[[str, Any, float], Awaitable[Mapping[int, Any]]]
"""(method, request, timeout) -> the replies of the other nodes that answered, by node id."""
CallOne = Callable[[int, str, Any], Awaitable[Any]]


@dataclass(frozen=True)
class RemoteSession:
    """A session on another node, as its ``Sessions`` answer described it (``SessionLike``
    for the policy; never pushed to or kicked directly)."""

    node_id: int
    remote_conn: int
    uid: str
    device_flag: int
    device_id: str
    device_level: int
    connected_at: float

    @property
    def conn_id(self) -> int:
        # Unique among this node's own connection ids, so that the policy never confuses them.
        return -(self.node_id << 48 | self.remote_conn)

    def push(self, msg: Any) -> None:  # pragma: no cover - never called on a remote session
        raise NotImplementedError

    def kick(self, reason_code: ReasonCode, reason: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        raise NotImplementedError


def older(a: SessionLike, b: SessionLike) -> bool:
    return a.connected_at < b.connected_at


class ClusterSessions:
    def __init__(
        self, registry: SessionRegistry, limits: DeviceLimits, call_each: CallEach, call: CallOne
    ) -> None:
        self._registry = registry
        self._limits = limits
        self._call_each = call_each
        self._call = call
        self.remote_evictions = 0

    async def rpc_sessions(self, req: pb.SessionsRequest) -> pb.SessionsReply:
        """The peer handler: this node's sessions of a uid on one platform."""
        return pb.SessionsReply(
            sessions=[
                pb.SessionEntry(
                    conn_id=s.conn_id,
                    device_id=s.device_id,
                    device_level=s.device_level,
                    connected_at=s.connected_at,
                )
                for s in self._registry.of_flag(req.uid, req.device_flag)
            ]
        )

    async def enforce(self, new: SessionLike) -> None:
        """Apply the policy to ``new`` and the uid's sessions on every node that answers."""
        request = pb.SessionsRequest(uid=new.uid, device_flag=new.device_flag)
        replies = await self._call_each("Sessions", request, QUERY_TIMEOUT_S)
        remote = [
            RemoteSession(
                node_id,
                e.conn_id,
                new.uid,
                new.device_flag,
                e.device_id,
                e.device_level,
                e.connected_at,
            )
            for node_id, reply in replies.items()
            for e in reply.sessions
        ]
        existing: list[SessionLike] = [s for s in remote if older(s, new)]
        if not existing or new not in self._registry.of(new.uid):
            return  # nothing elsewhere to weigh, or the new session is already gone
        local = self._registry.of_flag(new.uid, new.device_flag)
        existing += [s for s in local if s is not new and older(s, new)]
        kicks: dict[tuple[int, bool], list[int]] = {}
        for ev in evictions(existing, new, self._limits):
            s = ev.session
            if isinstance(s, RemoteSession):
                kicks.setdefault((s.node_id, not ev.kick), []).append(s.remote_conn)
            elif ev.kick:
                s.kick(ReasonCode.CONNECT_KICK, KICK_REASON)
            else:
                s.close()
        for (node_id, quiet), conn_ids in sorted(kicks.items()):
            self.remote_evictions += len(conn_ids)
            log.info(
                "evicting sessions on another node",
                uid=new.uid,
                node=node_id,
                conns=conn_ids,
                quiet=quiet,
            )
            await self._call(
                node_id,
                "Kick",
                pb.KickRequest(
                    uid=new.uid,
                    device_flag=new.device_flag,
                    reason=KICK_REASON,
                    conn_ids=conn_ids,
                    quiet=quiet,
                ),
            )
