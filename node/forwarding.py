"""A send's way to its group's leader: a slot that carries one send's fate, and the batching
forwarder that takes sends to a leader on another node (``ForwardSends``)."""

from __future__ import annotations

from collections.abc import Callable

import trio

from proto.raftchat.peer.v1 import peer_pb2 as pb

from .groups.batching import gather
from .groups.local import ProposalError
from .groups.pipeline import GroupPipeline
from .peer_calls import PeerCalls
from .route_failures import Failure

StatusFailure = Callable[[int, pb.Status], "Failure | None"]
"""(group, a peer's answer status) -> the failure it means, or None when it was served."""


class SubmitSlot:
    """One send's fate: its outcome, or the failure that ended its attempt (``unknown`` until
    it is known, so that a wait that times out answers ``unknown``)."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: pb.SendOutcome | Failure = Failure.UNKNOWN

    def finish(self, outcome: pb.SendOutcome | None, error: ProposalError | None) -> None:
        if outcome is not None:
            self.result = outcome
        else:
            self.result = Failure.of(error.kind) if error else Failure.UNKNOWN
        self.done.set()

    async def wait(self, timeout_s: float) -> pb.SendOutcome | Failure:
        with trio.move_on_after(timeout_s):
            await self.done.wait()
        return self.result


def submit_start(pipeline: GroupPipeline, item: pb.SendItem) -> SubmitSlot:
    """Queue a send now (so queued sends keep their order); await the slot for its fate."""
    slot = SubmitSlot()
    pipeline.submit_nowait(item, slot.finish)
    return slot


class Forwarder:
    """Sends to one group's leader on one other node, batched: items queued within a moment
    travel in one ForwardSends call."""

    def __init__(
        self,
        peers: PeerCalls,
        status_failure: StatusFailure,
        target: int,
        group: int,
        window_s: float,
        timeout_s: float,
    ) -> None:
        self._peers = peers
        self._status_failure = status_failure
        self.target = target
        self.group = group
        self._window_s = window_s
        self._timeout_s = timeout_s
        self._send, self._recv = trio.open_memory_channel[tuple[pb.SendItem, SubmitSlot]](50_000)

    def start(self, item: pb.SendItem) -> SubmitSlot:
        slot = SubmitSlot()
        try:
            self._send.send_nowait((item, slot))
        except trio.WouldBlock:
            slot.result = Failure.FORWARD_FAILED
            slot.done.set()
        return slot

    async def forward(self, item: pb.SendItem) -> pb.SendOutcome | Failure:
        return await self.start(item).wait(self._timeout_s + 5)

    async def run(self) -> None:
        async for first in self._recv:
            batch = await gather(
                self._recv,
                first,
                window_s=self._window_s,
                window_items=512,
                max_items=2048,
            )
            # One call at a time per (leader, group): a later batch never overtakes an
            # earlier one; what queues meanwhile rides in the next, bigger batch.
            await self._flush(batch)

    async def _flush(self, batch: list[tuple[pb.SendItem, SubmitSlot]]) -> None:
        request = pb.ForwardSendsRequest(group=self.group, items=[i for i, _ in batch])
        reply = await self._peers.call(self.target, "ForwardSends", request)
        results: list[pb.SendOutcome | Failure]
        if isinstance(reply, Failure):
            results = [reply] * len(batch)
        elif failure := self._status_failure(self.group, reply.status):
            results = [failure] * len(batch)
        else:
            results = [Failure.of(o.failure) if o.failure else o for o in reply.outcomes]
        for (_, slot), result in zip(batch, results, strict=True):
            slot.result = result
            slot.done.set()
