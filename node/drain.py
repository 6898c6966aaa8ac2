"""Drain (lame duck): a node leaves service without failing a client's send.

In order, each step bounded so that the whole fits in ``node.shutdown_timeout_s``:

1. Mark the node draining: ``/route`` stops handing it out (here at once, and on the other nodes
   as soon as they get the word, which it sends them), ``/health`` answers 503, and the
   controller's leader balancer moves no leadership to it.
2. Close the gateway's listeners: a new WKProto or JSON-RPC connection is refused. The HTTP API
   and the public gRPC API keep answering.
3. Hand every Raft leadership it holds (the controller's too) to a caught-up member that is
   neither draining nor silent, so that no group waits for an election once the node is gone.
4. Tell every session to go: it takes no further SEND, those in flight are answered, then it
   gets DISCONNECT with reason ``NODE_NOT_MATCH`` (18, "connect elsewhere": a client asks
   ``/route`` again; not ``CONNECT_KICK``, which SDKs treat as a logout), and is closed.
5. Wait until the sessions are gone (the client hangs up after the DISCONNECT, or the node
   closes the socket ``gateway.kick_close_delay_s`` later), and until the HTTP requests being
   handled by then are answered (sends through the API among them).

Then the node exits: after SIGTERM, and after ``raftchat cluster drain`` alike (a drained node
serves nothing worth keeping it up for; starting it again undoes the drain).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import trio

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ReasonCode

from .admin import AdminError
from .gateway.session import Session
from .log import get_logger
from .route_failures import Failure
from .sessions import SessionLike

if TYPE_CHECKING:
    from .app import Node

log = get_logger("drain")

SHARE_OF_SHUTDOWN = 0.7
"""Of ``node.shutdown_timeout_s``, what the drain may take: the rest is for the stop itself
(Raft driver, stores), which must also fit."""
ANNOUNCE_TIMEOUT_S = 1.0
"""One attempt to tell a node that this one drains."""
ANNOUNCE_RETRY_S = 3.0
"""How long a node that did not answer is asked again (within the drain's budget)."""
TRANSFER_WAIT_S = 1.0
"""After a leadership transfer was sent, how long to wait for the leadership to go."""
RAFT_POLL_S = 0.02
"""Leadership changes signal nothing we can wait on: polled."""
REASON = "node draining: reconnect through /route"


class Drain:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.started = False
        self.done = trio.Event()
        self.moved = 0
        """Leaderships handed over so far."""

    @property
    def budget_s(self) -> float:
        return self.node.config.node.shutdown_timeout_s * SHARE_OF_SHUTDOWN

    async def run(self) -> None:
        """Drain this node (once; a second call waits for the first)."""
        if self.started:
            await self.done.wait()
            return
        self.started = True
        node = self.node
        start = trio.current_time()
        log.info("draining", sessions=len(node.registry), budget_s=round(self.budget_s, 2))
        try:
            with trio.move_on_after(self.budget_s) as budget:
                node.client_routes.draining = True
                await self._announce()
                if node.gateway is not None:
                    node.gateway.stop_accepting()
                await self._move_leaderships()
                await self._disconnect_sessions()
                if node.http is not None:
                    await node.http.answered()  # HTTP sends under way when the sessions went
            log.info(
                "drained" if not budget.cancelled_caught else "drain cut short by its budget",
                leaderships_moved=self.moved,
                sessions_left=len(node.registry),
                took_s=round(trio.current_time() - start, 3),
            )
        finally:
            self.done.set()

    async def _announce(self) -> None:
        """Tell the other nodes, so that their ``/route`` stops handing this one out now. A
        node that does not answer at once is asked again for up to ``ANNOUNCE_RETRY_S``: one
        that restarted a moment ago is reachable only once this node's channel to it has
        reconnected, and until it hears, it would hand this node out to clients."""
        me = self.node.config.node.id
        body = json.dumps({"op": "peer_draining", "node_id": me}).encode()
        pending = {n for n in self.node.router.placement.nodes if n != me}
        deadline = trio.current_time() + ANNOUNCE_RETRY_S
        backoff = 0.05
        while pending:
            answered: set[int] = set()
            async with trio.open_nursery() as nursery:
                for node_id in sorted(pending):
                    nursery.start_soon(self._tell, node_id, body, answered)
            pending -= answered
            if not pending:
                return
            if trio.current_time() + backoff > deadline:
                log.warning("not every node heard that this one drains", nodes=sorted(pending))
                return
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    async def _tell(self, node_id: int, body: bytes, answered: set[int]) -> None:
        with trio.move_on_after(ANNOUNCE_TIMEOUT_S):
            reply = await self.node.router.call_node(
                node_id, "Admin", pb.AdminRequest(request=body)
            )
            if not isinstance(reply, Failure):
                answered.add(node_id)

    def _successors(self, group: int) -> list[int]:
        """Members of ``group`` that may take its leadership: live and not draining."""
        node = self.node
        me = node.config.node.id
        live = node.client_routes.live()
        if group == 0:
            members = sorted(node.router.placement.nodes)
        else:
            members = node.router.placement.replicas(group)
        return [n for n in members if n != me and n in live]

    async def _move_leaderships(self) -> None:
        """Every leadership at once (a transfer is mostly waiting)."""
        async with trio.open_nursery() as nursery:
            for group, local in sorted(self.node.router.local.items()):
                if local.is_leader():
                    nursery.start_soon(self._move_leadership, group)

    async def _move_leadership(self, group: int) -> bool:
        """Hand the leadership of ``group`` to a successor; False if none could take it (the
        rest of the drain goes on: the group elects a leader once this node is gone)."""
        local = self.node.router.local.get(group)
        if local is None:
            return False  # dropped meanwhile: nothing to hand over
        attempt = 0
        while local.is_leader():
            successors = self._successors(group)
            if not successors:
                log.info("no member to hand a leadership to", group=group)
                return False
            # Each in turn: pysyncobj refuses a member that is not fully caught up.
            target = successors[attempt % len(successors)]
            attempt += 1
            try:
                await self.node.admin_call({"op": "transfer_leader", "group": group, "to": target})
            except AdminError:
                await trio.sleep(RAFT_POLL_S)  # behind by an entry or two: soon caught up
                continue
            with trio.move_on_after(TRANSFER_WAIT_S):
                while local.is_leader():
                    await trio.sleep(RAFT_POLL_S)
        log.info("leadership handed over", group=group)
        self.moved += 1
        return True

    async def _disconnect_sessions(self) -> None:
        node = self.node
        gone = trio.Event()

        def go(session: SessionLike) -> None:
            if isinstance(session, Session):
                session.drain(ReasonCode.NODE_NOT_MATCH, REASON, self.budget_s)
            else:
                session.kick(ReasonCode.NODE_NOT_MATCH, REASON)

        def on_session(session: SessionLike, online: bool) -> None:
            if online:
                go(session)  # its CONNECT was on the way when the listeners closed
            elif len(node.registry) == 0:
                gone.set()

        node.registry.listeners.append(on_session)
        try:
            for session in node.registry.all():
                go(session)
            if len(node.registry) == 0:
                gone.set()
            await gone.wait()
        finally:
            node.registry.listeners.remove(on_session)
