"""Group commit in front of a slot group's Raft log: SENDs gathered for ~1 ms become ONE
command; the answer goes out once the batch is committed on a majority, applied here and the
leader's RocksDB WAL is fsynced.

Order matters twice: batches are proposed in the order their sends arrived, and fan-out is
released in log order even when several batches are in flight and their fsyncs finish out of
order (a session drops a RECV whose seq is below one it already got).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import trio

from cluster.invariant import invariant
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import HeaderFlag, ReasonCode

from ..command_channels import source_of
from ..ids import next_message_id
from ..log import get_logger
from ..sabotage import AckCounter
from .batching import gather
from .local import LocalGroup, Proposal, ProposalError
from .rate_limit import ChannelRateLimiter

log = get_logger("pipeline")

Done = Callable[[pb.SendOutcome | None, ProposalError | None], None]
Committed = Callable[[int, list[pb.Message], list[pb.SendItem]], None]
"""(group id, committed messages, the item each came from) -> fan-out."""
_Batch = list[tuple[pb.SendItem, Done]]


class GroupPipeline:
    def __init__(
        self,
        group: LocalGroup,
        on_committed: Committed,
        *,
        commit_window_s: float,
        max_batch: int,
        proposal_timeout_s: float,
        max_in_flight: int = 4,
        queue_size: int = 50_000,
        fake_acks: AckCounter | None = None,
        group_rate_limit: float = 0.0,
        observe_commit: Callable[[float], None] | None = None,
    ) -> None:
        self.group = group
        # Sends to one non-person channel per second; checked here, on the leader, before the
        # send is proposed (never in apply: rates depend on the clock).
        self.rate_limiter = ChannelRateLimiter(group_rate_limit)
        # SABOTAGE (tests only, ``testing.sabotage = ack-without-commit``); None in production.
        self._fake_acks = fake_acks
        self._on_committed = on_committed
        self._window_s = commit_window_s
        self._max_batch = max_batch
        self._timeout_s = proposal_timeout_s
        # Several batches may be in Raft at once: throughput without waiting a round trip
        # per batch; the log keeps them in order.
        self._max_in_flight = max_in_flight
        self._in_flight = trio.Semaphore(max_in_flight)
        self._send, self._recv = trio.open_memory_channel[tuple[pb.SendItem, Done]](queue_size)
        self._next_number = 0
        self._next_release = 0
        self._ready: dict[int, tuple[list[pb.Message], list[pb.SendItem]] | None] = {}
        self._closed = False
        self.batches = 0
        self.items = 0
        # Recent commit latencies (propose -> committed, applied and fsynced), for the status
        # route and the bench; a ring, so it costs nothing to keep.
        self.commit_latency_s: collections.deque[float] = collections.deque(maxlen=2048)
        self._observe_commit = observe_commit
        """The same latencies into ``/metrics``' histogram (every one, not a ring)."""

    def submit_nowait(self, item: pb.SendItem, done: Done) -> None:
        if self._closed:
            done(None, ProposalError("not_leader", "replica closed"))
            return
        if self._fake_acks is not None and self.group.is_leader() and self._fake_acks.due():
            # SABOTAGE: a success that looks real for a send that never reaches Raft, i.e. an
            # acknowledged message that is lost; the chaos checkers must catch it.
            done(self._fake_outcome(item), None)
            return
        if not self.rate_limiter.allow(item.channel_type, source_of(item.channel_id)):
            done(pb.SendOutcome(reason=ReasonCode.RATE_LIMIT), None)
            return
        try:
            self._send.send_nowait((item, done))
        except trio.WouldBlock:
            done(None, ProposalError("unknown", "send queue full"))

    def _fake_outcome(self, item: pb.SendItem) -> pb.SendOutcome:
        """The ids the send would plausibly have got: the channel's next seq as stored now and
        the group's next message id (the next real send will get the same seq)."""
        store = self.group.store
        seq = 0
        if not item.flags & HeaderFlag.NO_PERSIST:
            seq = store.head_seq(item.channel_type, item.channel_id) + 1
        message_id = next_message_id(
            store.last_message_id(), int(time.time() * 1000), self.group.group_id
        )
        return pb.SendOutcome(reason=ReasonCode.SUCCESS, message_id=message_id, message_seq=seq)

    async def close(self) -> None:
        """Refuse new sends, fail queued ones, and wait for batches in Raft to finish."""
        self._closed = True
        while True:
            try:
                _, done = self._recv.receive_nowait()
            except trio.WouldBlock:
                break
            done(None, ProposalError("not_leader", "replica closed"))
        for _ in range(self._max_in_flight):
            await self._in_flight.acquire()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                batch = await gather(
                    self._recv,
                    await self._recv.receive(),
                    window_s=self._window_s,
                    window_items=self._max_batch,
                    max_items=self._max_batch,
                )
                await self._in_flight.acquire()
                number = self._next_number
                self._next_number += 1
                command = pb.Command(
                    time_ms=int(time.time() * 1000),
                    send=pb.SendBatch(items=[item for item, _ in batch]),
                )
                try:
                    proposal = self.group.propose_start(command)  # in order, now
                except ProposalError as e:
                    self._fail(batch, e)
                    self._release(number, None)
                    self._in_flight.release()
                    continue
                nursery.start_soon(self._complete, number, batch, proposal, time.perf_counter())

    def _fail(self, batch: _Batch, error: ProposalError) -> None:
        for _, done in batch:
            done(None, error)

    async def _complete(
        self, number: int, batch: _Batch, proposal: Proposal, started: float
    ) -> None:
        fanout: tuple[list[pb.Message], list[pb.SendItem]] | None = None
        try:
            try:
                raw = await proposal.result(self._timeout_s)
            except ProposalError as e:
                self._fail(batch, e)
                return
            # A failed fsync here raises and stops the node: no answer would be honest.
            await self.group.make_durable()
            latency = time.perf_counter() - started
            self.commit_latency_s.append(latency)
            if self._observe_commit is not None:
                self._observe_commit(latency)
            result = pb.SendBatchResult.FromString(raw)
            if len(result.outcomes) != len(batch):
                # Only a command the state machine skipped as already applied answers short:
                # its outcome is not ours to report, so the senders retry (dedupe decides).
                log.error("short apply result", group=self.group.group_id, size=len(batch))
                self._fail(batch, ProposalError("unknown", "apply result does not match"))
                return
            self.batches += 1
            self.items += len(batch)
            origins: list[pb.SendItem] = []
            for (item, done), outcome in zip(batch, result.outcomes, strict=True):
                done(outcome, None)
                # The state machine lists a new message for exactly these outcomes, in order.
                if outcome.reason == 1 and not outcome.duplicate:
                    origins.append(item)
            if result.committed:
                fanout = (list(result.committed), origins)
        finally:
            self._release(number, fanout)
            self._in_flight.release()

    def _release(
        self, number: int, fanout: tuple[list[pb.Message], list[pb.SendItem]] | None
    ) -> None:
        """Fan batches out in the order they were proposed (= log order)."""
        # Numbers are given out once each, in proposal order: a number at or below one already
        # released, or released twice, would send its messages out of log order or twice.
        invariant(
            number >= self._next_release and number not in self._ready,
            "a batch is released once, in log order",
            number,
            self._next_release,
        )
        self._ready[number] = fanout
        while self._next_release in self._ready:
            ready = self._ready.pop(self._next_release)
            self._next_release += 1
            if ready is not None:
                self._on_committed(self.group.group_id, ready[0], ready[1])
