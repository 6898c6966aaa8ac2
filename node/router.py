"""The node's view of the cluster: which group owns a key, who leads it, and how a request gets
there. Every send, metadata change and fresh read goes through here, whether this node is the
group's leader, a follower, or holds no replica at all.

A request for a group led elsewhere is forwarded over the peer gRPC service (sends in batches
per target and group). Transient failures are retried here within ``forward_timeout_s``, then
answered with a reason code (``docs/protocol.md``):

* ``NodeMatchError`` (17): no leader could be found (election in progress, no quorum);
* ``NodeNotMatch`` (18): the node asked was no longer the leader, or the outcome is unknown
  (a timed-out proposal may still commit): resend with the same ``client_msg_no``;
* ``ForwardSendPacketError`` (10): the leader could not be reached over the network.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from cluster.bridge import Notice
from cluster.grpc_client import GrpcClients
from cluster.placement import Placement
from cluster.stream_server import InboundStream
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ReasonCode

from .command_channels import source_of
from .fanout import CommitHook, DeliverLocal, FanOut
from .forwarding import Forwarder, SubmitSlot, submit_start
from .groups.local import LocalGroup, ProposalError
from .groups.pipeline import GroupPipeline
from .groups.reads import run_query
from .log import get_logger
from .peer_calls import PeerCalls, PeerStreams
from .peer_service import (
    KickLocal,
    LeaderService,
    OnlineLevelsLocal,
    OnlineLocal,
    SessionsEverywhere,
    inbound,
    notices,
)
from .route_failures import (
    REASON_OF_FAILURE,
    STATUS_FAILURE,
    Failure,
    give_up_failure,
    may_have_committed,
    rotate_after,
)

log = get_logger("router")


class ClusterUnavailable(Exception):
    """A metadata change or read could not be served in time; ``reason`` says why."""

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class RouterSettings:
    node_id: int
    grpc_port: int
    forward_timeout_s: float = 5.0
    proposal_timeout_s: float = 3.0
    rpc_timeout_s: float = 3.0
    forward_window_s: float = 0.001


class Router:
    def __init__(
        self,
        settings: RouterSettings,
        placement: Placement,
        clients: GrpcClients,
        deliver_local: DeliverLocal,
        kick_local: KickLocal,
        online_local: OnlineLocal,
        *,
        online_levels_local: OnlineLevelsLocal | None = None,
        commit_hooks: Sequence[CommitHook] = (),
        streams: PeerStreams | None = None,
    ) -> None:
        self.s = settings
        self.placement = placement
        self.local: dict[int, LocalGroup] = {}
        self.pipelines: dict[int, GroupPipeline] = {}
        self._hints: dict[int, int] = {}
        self._forwarders: dict[tuple[int, int], Forwarder] = {}
        self._pipeline_scopes: dict[int, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self.retries = 0
        """Attempts retried by ``_retrying`` (``raftchat_forward_retries_total``)."""
        self.peers = PeerCalls(
            settings.node_id,
            settings.grpc_port,
            settings.rpc_timeout_s,
            clients,
            lambda: self.placement,
            streams,
        )
        self.fanout = FanOut(
            self.peers, lambda: self.placement, self.local, deliver_local, commit_hooks
        )
        self.leader = LeaderService(
            self.local,
            self.pipelines,
            self.read_local,
            settings.forward_timeout_s,
            settings.proposal_timeout_s,
        )
        self.sessions = SessionsEverywhere(
            self.peers, kick_local, online_local, online_levels_local
        )

    # --- setup ------------------------------------------------------------------------------

    def attach(self, group: LocalGroup, pipeline: GroupPipeline | None) -> None:
        """Serve a local replica (the controller group has no send pipeline)."""
        self.local[group.group_id] = group
        if pipeline is not None:
            self.pipelines[group.group_id] = pipeline
            if self._nursery is not None:
                self._nursery.start_soon(self._run_pipeline, group.group_id, pipeline)

    def detach(self, group: int) -> None:
        self.local.pop(group, None)
        self.pipelines.pop(group, None)
        scope = self._pipeline_scopes.pop(group, None)
        if scope is not None:
            scope.cancel()

    async def _run_pipeline(self, group: int, pipeline: GroupPipeline) -> None:
        with trio.CancelScope() as scope:
            self._pipeline_scopes[group] = scope
            await pipeline.run()

    def set_placement(self, placement: Placement) -> None:
        """Adopt a newer cluster map from the controller."""
        if placement.version < self.placement.version:
            return
        self.placement = placement
        if self._nursery is not None:
            self.fanout.ensure_senders(self._nursery)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for group, pipeline in self.pipelines.items():
                nursery.start_soon(self._run_pipeline, group, pipeline)
            self.fanout.ensure_senders(nursery)
            task_status.started()
            await trio.sleep_forever()

    def group_of(self, key: str) -> int:
        # A command twin lives with its source channel (node/command_channels.py).
        return self.placement.group_of(source_of(key))

    def leader_of(self, group: int) -> int | None:
        local = self.local.get(group)
        if local is not None:
            return local.leader_id()
        hint = self._hints.get(group)
        if hint is not None:
            return hint
        replicas = self.placement.replicas(group)
        return replicas[0] if replicas else None

    def status(self) -> dict[str, Any]:
        """This node's view of the cluster map and of leaderships (for operators and tests)."""
        groups = []
        for gid, replicas in [
            (0, sorted(self.placement.nodes)),
            *sorted(self.placement.groups.items()),
        ]:
            local = self.local.get(gid)
            entry: dict[str, Any] = {
                "group": gid,
                "replicas": replicas,
                "leader": self.leader_of(gid) if local is not None else None,
                "local": local is not None,
            }
            if local is not None:
                view = local.view
                entry["applied_index"] = local.store.applied_index()
                entry["commit_index"] = view.commit_index
                # Raft's own applied position (includes election no-ops, which never reach the
                # state machine, so it can exceed applied_index).
                entry["raft_applied"] = view.applied_index
                entry["term"] = view.term  # grows with every election
                entry["is_leader"] = view.is_leader
                pipeline = self.pipelines.get(gid)
                if pipeline is not None:
                    entry["batches"] = pipeline.batches
                    entry["sends"] = pipeline.items
                    entry["commit_ms"] = _percentiles(pipeline.commit_latency_s)
            groups.append(entry)
        return {
            "node_id": self.s.node_id,
            "placement_version": self.placement.version,
            "nodes": {str(n): h for n, h in sorted(self.placement.nodes.items())},
            "groups": groups,
            "slot_table": self.placement.slot_table,
        }

    def groups_ready(self) -> bool:
        """Every group this node replicates knows its leader."""
        return all(g.leader_id() is not None for g in self.local.values())

    # --- sends ------------------------------------------------------------------------------

    def begin_send(self, item: pb.SendItem) -> Callable[[], Awaitable[pb.SendOutcome]]:
        """Queue the first attempt of a send now, so that sends keep their arrival order; the
        returned function waits for it (and retries on failure)."""
        group = self.group_of(item.channel_id)
        item.origin_node = self.s.node_id
        target = self.leader_of(group)
        first: SubmitSlot | None = None
        if target == self.s.node_id and group in self.pipelines:
            first = submit_start(self.pipelines[group], item)
        elif target is not None and target != self.s.node_id:
            first = self._forwarder(target, group).start(item)

        async def finish() -> pb.SendOutcome:
            maybe = False
            if first is not None:
                result = await first.wait(self.s.forward_timeout_s + 5)
                if not isinstance(result, Failure):
                    return result
                maybe = may_have_committed(result)
            return await self.send(item, maybe_committed=maybe)

        return finish

    def _forwarder(self, target: int, group: int) -> Forwarder:
        key = (target, group)
        forwarder = self._forwarders.get(key)
        if forwarder is None:
            assert self._nursery is not None
            forwarder = self._forwarders[key] = Forwarder(
                self.peers,
                self.status_failure,
                target,
                group,
                self.s.forward_window_s,
                self.s.forward_timeout_s,
            )
            self._nursery.start_soon(forwarder.run)
        return forwarder

    async def send(self, item: pb.SendItem, maybe_committed: bool = False) -> pb.SendOutcome:
        """Commit one send on its group's leader; always answers, with a reason on failure."""
        group = self.group_of(item.channel_id)
        item.origin_node = self.s.node_id
        failure = await self._retrying(
            group, lambda target: self._send_once(group, target, item), maybe_committed
        )
        if isinstance(failure, pb.SendOutcome):
            return failure
        return pb.SendOutcome(reason=REASON_OF_FAILURE[failure])

    async def _send_once(
        self, group: int, target: int, item: pb.SendItem
    ) -> pb.SendOutcome | Failure:
        if target == self.s.node_id:
            pipeline = self.pipelines.get(group)
            if pipeline is None:
                return Failure.NOT_LEADER
            return await submit_start(pipeline, item).wait(self.s.forward_timeout_s + 5)
        return await self._forwarder(target, group).forward(item)

    async def _retrying(
        self, group: int, attempt: Callable[[int], Any], maybe_committed: bool = False
    ) -> Any:
        """Run ``attempt(leader)`` until it returns something other than a ``Failure``, or the
        forward timeout passes; returns the result or the last failure."""
        deadline = trio.current_time() + self.s.forward_timeout_s
        backoff = 0.01
        failure = Failure.NO_LEADER
        # Once an attempt may have committed, the final answer must not claim that nothing was.
        while True:
            target = self.leader_of(group)
            if target is not None:
                result = await attempt(target)
                if not isinstance(result, Failure):
                    return result
                failure = result
                maybe_committed = maybe_committed or may_have_committed(failure)
                if rotate_after(failure, self._hints.get(group), target):
                    self._rotate_guess(group, target)
            if trio.current_time() + backoff > deadline:
                log.info("giving up on group", group=group, failure=failure)
                return give_up_failure(failure, maybe_committed)
            self.retries += 1
            # Back off before retrying a moving leadership, but no longer than until a local
            # replica names another leader (after a failover that saves up to a whole backoff).
            local = self.local.get(group)
            if local is None:
                await trio.sleep(backoff)
            elif local.leader_id() in (None, target):
                await local.leader_news(backoff)
            else:
                await trio.lowlevel.checkpoint()  # the news came while the attempt failed
            backoff = min(backoff * 2, 0.2)

    def _rotate_guess(self, group: int, failed: int) -> None:
        replicas = self.placement.replicas(group)
        if failed in replicas and len(replicas) > 1:
            self._hints[group] = replicas[(replicas.index(failed) + 1) % len(replicas)]
        else:
            self._hints.pop(group, None)

    def note_hint(self, group: int, status: pb.Status) -> None:
        if status.leader_hint and group not in self.local:
            self._hints[group] = status.leader_hint

    # --- metadata and reads -------------------------------------------------------------------

    async def meta(self, key: str, op: pb.MetaOp) -> pb.MetaResult:
        return await self.meta_group(self.group_of(key), op)

    async def meta_group(self, group: int, op: pb.MetaOp) -> pb.MetaResult:
        """Commit a metadata change in slot group ``group`` (state not indexed by one key)."""

        async def once(target: int) -> Any:
            if target == self.s.node_id:
                local = self.local.get(group)
                if local is None:
                    return Failure.NOT_LEADER
                try:
                    raw = await local.propose(
                        pb.Command(time_ms=int(time.time() * 1000), meta=op),
                        self.s.proposal_timeout_s,
                    )
                except ProposalError as e:
                    return Failure.of(e.kind)
                await local.make_durable()
                return pb.MetaResult.FromString(raw)
            reply = await self.peers.call(
                target, "ProposeMeta", pb.ProposeMetaRequest(group=group, op=op)
            )
            if isinstance(reply, Failure):
                return reply
            return self.status_failure(group, reply.status) or reply.result

        result = await self._retrying(group, once)
        if isinstance(result, Failure):
            raise ClusterUnavailable(REASON_OF_FAILURE[result], f"group {group}: {result}")
        assert isinstance(result, pb.MetaResult)
        return result

    async def read(self, key: str, query: dict[str, Any]) -> Any:
        """A linearizable read of the group owning ``key``, served by its leader."""
        return await self.read_group(self.group_of(key), query)

    async def read_every_group(self, query: dict[str, Any]) -> list[Any]:
        """The same read on every slot group (concurrently), for state indexed by something
        other than the group's key, such as a user's conversations: one result per group."""
        results: dict[int, Any] = {}
        failures: list[ClusterUnavailable] = []

        async def one(group: int) -> None:
            try:
                results[group] = await self.read_group(group, query)
            except ClusterUnavailable as e:
                failures.append(e)  # raised below, unwrapped from the nursery's group

        async with trio.open_nursery() as nursery:
            for group in sorted(self.placement.groups):
                nursery.start_soon(one, group)
        if failures:
            raise failures[0]
        return [results[g] for g in sorted(results)]

    async def read_group(self, group: int, query: dict[str, Any]) -> Any:
        """A linearizable read of slot group ``group``, served by its leader."""

        async def once(target: int) -> Any:
            if target == self.s.node_id:
                return await self.read_local(group, query)
            reply = await self.peers.call(
                target, "Read", pb.ReadRequest(group=group, query=json.dumps(query).encode())
            )
            if isinstance(reply, Failure):
                return reply
            failure = self.status_failure(group, reply.status)
            return failure or _Value(json.loads(reply.result))

        result = await self._retrying(group, once)
        if isinstance(result, Failure):
            raise ClusterUnavailable(REASON_OF_FAILURE[result], f"group {group}: {result}")
        return result.value

    async def read_local(self, group: int, query: dict[str, Any]) -> Any:
        local = self.local.get(group)
        if local is None:
            return Failure.NOT_LEADER
        try:
            await local.read_barrier(self.s.proposal_timeout_s)
        except ProposalError as e:
            return Failure.of(e.kind)
        return _Value(run_query(local.store, query))

    def status_failure(self, group: int, status: pb.Status) -> Failure | None:
        """A peer's answer status as a failure (None when it served the request); keeps the
        leader hint it carries."""
        if status.code == pb.Status.OK:
            return None
        self.note_hint(group, status)
        return STATUS_FAILURE.get(status.code, Failure.UNKNOWN)

    # --- peer service and cluster-wide calls ---------------------------------------------

    def handlers(self) -> dict[str, Callable[[Any], Any]]:
        """The routing part of the peer service's request handlers (``Deliver`` is among
        ``notices()``); the node adds its own (``node/compose.py``)."""
        return {**self.leader.handlers(), **self.sessions.handlers()}

    def notices(self) -> dict[str, Notice]:
        return notices(self.fanout.deliver)

    def inbound(self) -> dict[str, InboundStream]:
        return inbound(self.fanout.deliver)

    def peer_target(self, node_id: int) -> str:
        return self.peers.target(node_id)

    async def call_node(self, node_id: int, method: str, request: Any) -> Any:
        """``method`` on one node; its reply, or ``Failure.FORWARD_FAILED`` (best effort)."""
        return await self.peers.call(node_id, method, request)

    async def call_other_nodes(self, method: str, request: Any) -> list[Any]:
        """``method`` on every other node; the replies of those that answered in time."""
        return await self.peers.gather(method, request)

    async def call_each_other_node(
        self, method: str, request: Any, timeout_s: float
    ) -> dict[int, Any]:
        """``method`` on every other node; the replies of those that answered within
        ``timeout_s``, by node id."""
        return await self.peers.each(method, request, timeout_s)


def _percentiles(samples: Any) -> dict[str, float] | None:
    data = sorted(samples)
    if not data:
        return None

    def pick(q: float) -> float:
        return round(float(data[min(len(data) - 1, int(q * len(data)))]) * 1000, 2)

    return {"p50": pick(0.5), "p99": pick(0.99), "n": len(data)}


class _Value:
    """A successful result (so that ``None`` results are not mistaken for failures)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value
