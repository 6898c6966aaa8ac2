"""Fan-out: a committed batch's messages to their recipients' sessions, on this node and, in
commit order, on every other node (``Deliver``), which filter by their own sessions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from cluster.placement import Placement
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType

from .channels import recipients
from .command_channels import source_of
from .groups.local import LocalGroup
from .groups.machine import record_from_pb
from .peer_calls import PeerCalls
from .route_failures import Failure
from .storage import MessageRecord

DeliverLocal = Callable[[MessageRecord | pb.EventPush, list[str], "int | None"], None]
"""(message, recipient uids, origin connection on this node) -> RECV to local sessions."""
CommitHook = Callable[[pb.DeliverRequest], None]
"""Sees every committed batch on the leader, with each message's recipients (webhooks)."""

DELIVERY_RETRY_S = 3.0
QUEUED_PER_PEER = 10_000
"""Delivery batches waiting for one peer; past that a stalled peer's clients resync by seq."""


class FanOut:
    def __init__(
        self,
        peers: PeerCalls,
        placement: Callable[[], Placement],
        local: dict[int, LocalGroup],
        deliver_local: DeliverLocal,
        commit_hooks: Sequence[CommitHook] = (),
    ) -> None:
        self._peers = peers
        self._placement = placement
        self._local = local  # the router's replicas, shared: it attaches and detaches them
        self._deliver_local = deliver_local
        self._queues: dict[int, trio.MemorySendChannel[pb.DeliverRequest]] = {}
        self.commit_hooks = tuple(commit_hooks)
        self._failures = 0

    @property
    def failures(self) -> int:
        """Batches a peer never took (``raftchat_delivery_failures_total``)."""
        streams = self._peers.streams
        dropped = sum(s.dropped for s in streams.batches.all()) if streams is not None else 0
        return self._failures + dropped

    def ensure_senders(self, nursery: trio.Nursery) -> None:
        """One sender per member (started for new ones, closed for those that left)."""
        members = self._placement().nodes
        for node_id in self._peers.others():
            if node_id not in self._queues:
                send, recv = trio.open_memory_channel[pb.DeliverRequest](QUEUED_PER_PEER)
                self._queues[node_id] = send
                nursery.start_soon(self._sender, node_id, recv)
        for node_id in [n for n in self._queues if n not in members]:
            self._queues.pop(node_id).close()

    def on_committed(
        self, group: int, messages: list[pb.Message], items: list[pb.SendItem]
    ) -> None:
        """Runs on the leader after a batch is durable: RECV to local sessions, and the batch to
        every other node for theirs (they filter by their own sessions)."""
        local = self._local.get(group)
        if local is None:
            return  # the replica was dropped while this batch was finishing
        subscribers: dict[tuple[int, str], list[str]] = {}
        request = pb.DeliverRequest()
        for message, item in zip(messages, items, strict=True):
            # A command twin's recipients are its source channel's.
            key = (message.channel_type, source_of(message.channel_id))
            if item.subscribers:
                uids = list(item.subscribers)  # an explicit recipient list, whatever the channel
            else:
                if key not in subscribers:
                    subscribers[key] = (
                        []
                        if message.channel_type == ChannelType.PERSON
                        else local.store.subscribers(*key)
                    )
                uids = recipients(key[1], message.channel_type, subscribers[key])
            request.messages.append(message)
            request.recipients.append(
                pb.Recipients(uids=uids, origin_node=item.origin_node, origin_conn=item.origin_conn)
            )
        self.deliver(request)
        for hook in self.commit_hooks:
            hook(request)
        for send in self._queues.values():
            try:
                send.send_nowait(request)
            except trio.WouldBlock:
                self._failures += 1  # a stalled peer: its clients resync by seq

    async def push_online(self, message: pb.Message, uids: list[str]) -> None:
        """Deliver a message that is not stored (``message_seq`` 0: a command or notice) to the
        sessions of ``uids`` on every node that answers; best effort, like presence."""
        await self._broadcast(
            pb.DeliverRequest(messages=[message], recipients=[pb.Recipients(uids=uids)])
        )

    async def push_event(self, event: pb.EventPush) -> None:
        """A committed stream event to the sessions of ``event.uids`` on every node that
        answers; best effort like ``push_online`` (a client that missed one pages them with
        ``/message/eventsync``)."""
        await self._broadcast(pb.DeliverRequest(events=[event]))

    async def _broadcast(self, request: pb.DeliverRequest) -> None:
        self.deliver(request)
        await self._peers.gather("Deliver", request)

    def deliver(self, request: pb.DeliverRequest) -> None:
        """RECV to this node's sessions among the recipients (the peer ``Deliver`` notice)."""
        for message, rcpt in zip(request.messages, request.recipients, strict=True):
            origin = rcpt.origin_conn if rcpt.origin_node == self._peers.node_id else None
            self._deliver_local(record_from_pb(message), list(rcpt.uids), origin)
        for event in request.events:
            self._deliver_local(event, list(event.uids), None)

    async def _sender(
        self, node_id: int, queue: trio.MemoryReceiveChannel[pb.DeliverRequest]
    ) -> None:
        # One sender per peer keeps a channel's deliveries to that peer in commit order.
        async for first in queue:
            if node_id not in self._placement().nodes:
                return  # the node left the cluster
            merged = pb.DeliverRequest()
            merged.MergeFrom(first)
            while len(merged.messages) < 2000:
                try:
                    merged.MergeFrom(queue.receive_nowait())
                except trio.WouldBlock:
                    break
            stream = self._peers.stream(node_id, "DeliverStream")
            if stream is not None and not stream.unsupported:
                # In order, kept and sent again over a new stream for DELIVERY_RETRY_S when
                # one breaks (cluster/peer_stream.py).
                await stream.send(merged.SerializeToString())
                continue
            # A peer of an older version: the batches its stream never took, then this one.
            for body in stream.take_returned() if stream is not None else ():
                await self._call(node_id, pb.DeliverRequest.FromString(body))
            await self._call(node_id, merged)

    async def _call(self, node_id: int, merged: pb.DeliverRequest) -> None:
        """A batch as a single call (to a node that does not serve the stream)."""
        # A peer that just restarted refuses calls until its channel reconnects: retry the
        # head batch for a moment (later batches wait, keeping commit order) before giving up
        # on it; its clients then repair the gap by syncing.
        backoff = 0.05
        deadline = trio.current_time() + DELIVERY_RETRY_S
        while isinstance(await self._peers.call(node_id, "Deliver", merged), Failure):
            if trio.current_time() + backoff > deadline or node_id not in self._placement().nodes:
                self._failures += 1
                return
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)
