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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import trio

from cluster.bridge import GrpcAbort, GrpcCallError, GrpcClients, Notice
from cluster.placement import Placement
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode

from .channels import recipients
from .command_channels import source_of
from .groups.batching import gather
from .groups.local import LocalGroup, ProposalError
from .groups.machine import record_from_pb
from .groups.pipeline import GroupPipeline
from .groups.reads import QueryError, run_query
from .log import get_logger
from .route_failures import (
    REASON_OF_FAILURE,
    STATUS_FAILURE,
    Failure,
    give_up_failure,
    may_have_committed,
    rotate_after,
)
from .storage import MessageRecord

log = get_logger("router")

DeliverLocal = Callable[[MessageRecord | pb.EventPush, list[str], "int | None"], None]
"""(message, recipient uids, origin connection on this node) -> RECV to local sessions."""
KickLocal = Callable[[pb.KickRequest], int]
"""A ``Kick`` (uid, device flag or -1, reason, connection ids) -> sessions kicked here."""
OnlineLocal = Callable[[list[str]], list[tuple[str, int]]]
"""uids -> (uid, device flag) of their sessions on this node."""
OnlineLevelsLocal = Callable[[list[str]], list[tuple[str, int, int]]]
"""uids -> (uid, device flag, highest device level) of their sessions on this node."""
CommitHook = Callable[[pb.DeliverRequest], None]
"""Sees every committed batch on the leader, with each message's recipients (webhooks)."""

DELIVERY_RETRY_S = 3.0


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
    ) -> None:
        self.s = settings
        self.placement = placement
        self._clients = clients
        self._deliver_local = deliver_local
        self._kick_local = kick_local
        self._online_local = online_local
        self.local: dict[int, LocalGroup] = {}
        self.pipelines: dict[int, GroupPipeline] = {}
        self._hints: dict[int, int] = {}
        self._forwarders: dict[tuple[int, int], _Forwarder] = {}
        self._deliveries: dict[int, trio.MemorySendChannel[pb.DeliverRequest]] = {}
        self._pipeline_scopes: dict[int, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self.extra_handlers: dict[str, Callable[[Any], Any]] = {}
        self.delivery_failures = 0
        self.retries = 0
        """Attempts retried by ``_retrying`` (``raftchat_forward_retries_total``)."""
        self.commit_hooks: list[CommitHook] = []
        self.online_levels_local: OnlineLevelsLocal | None = None

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
        self._ensure_delivery_senders()

    def _ensure_delivery_senders(self) -> None:
        if self._nursery is None:
            return
        for node_id in self._other_nodes():
            if node_id not in self._deliveries:
                send, recv = trio.open_memory_channel[pb.DeliverRequest](10_000)
                self._deliveries[node_id] = send
                self._nursery.start_soon(self._delivery_sender, node_id, recv)
        for node_id in [n for n in self._deliveries if n not in self.placement.nodes]:
            self._deliveries.pop(node_id).close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for group, pipeline in self.pipelines.items():
                nursery.start_soon(self._run_pipeline, group, pipeline)
            self._ensure_delivery_senders()
            task_status.started()
            await trio.sleep_forever()

    def group_of(self, key: str) -> int:
        # A command twin lives with its source channel (node/command_channels.py).
        return self.placement.group_of(source_of(key))

    def peer_target(self, node_id: int) -> str:
        host = self.placement.nodes.get(node_id)
        if host is None:
            raise KeyError(f"node {node_id} is not in the cluster map")
        return f"{host}:{self.s.grpc_port}"

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

    def _forwarder(self, target: int, group: int) -> _Forwarder:
        key = (target, group)
        forwarder = self._forwarders.get(key)
        if forwarder is None:
            assert self._nursery is not None
            forwarder = self._forwarders[key] = _Forwarder(self, target, group)
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
            reply = await self._call(
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
            reply = await self._call(
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

    async def _call(
        self, target: int, method: str, request: Any, timeout_s: float | None = None
    ) -> Any:
        try:
            return await self._clients.get(self.peer_target(target)).call(
                method, request, timeout_s=timeout_s or self.s.rpc_timeout_s
            )
        except KeyError:
            return Failure.FORWARD_FAILED
        except GrpcCallError as e:
            log.debug("peer call failed", target=target, method=method, code=str(e.code))
            return Failure.FORWARD_FAILED

    # --- fan-out ----------------------------------------------------------------------------

    def on_committed(
        self, group: int, messages: list[pb.Message], items: list[pb.SendItem]
    ) -> None:
        """Runs on the leader after a batch is durable: RECV to local sessions, and the batch to
        every other node for theirs (they filter by their own sessions)."""
        local = self.local.get(group)
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
        for send in self._deliveries.values():
            try:
                send.send_nowait(request)
            except trio.WouldBlock:
                self.delivery_failures += 1  # a stalled peer: its clients resync by seq

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
        await self._gather("Deliver", request)

    def deliver(self, request: pb.DeliverRequest) -> None:
        for message, rcpt in zip(request.messages, request.recipients, strict=True):
            origin = rcpt.origin_conn if rcpt.origin_node == self.s.node_id else None
            self._deliver_local(record_from_pb(message), list(rcpt.uids), origin)
        for event in request.events:
            self._deliver_local(event, list(event.uids), None)

    async def _delivery_sender(
        self, node_id: int, queue: trio.MemoryReceiveChannel[pb.DeliverRequest]
    ) -> None:
        # One sender per peer keeps a channel's deliveries to that peer in commit order.
        async for first in queue:
            if node_id not in self.placement.nodes:
                return  # the node left the cluster
            merged = pb.DeliverRequest()
            merged.MergeFrom(first)
            while len(merged.messages) < 2000:
                try:
                    merged.MergeFrom(queue.receive_nowait())
                except trio.WouldBlock:
                    break
            # A peer that just restarted refuses calls until its channel reconnects: retry the
            # head batch for a moment (later batches wait, keeping commit order) before giving
            # up on it; its clients then repair the gap by syncing.
            backoff = 0.05
            deadline = trio.current_time() + DELIVERY_RETRY_S
            while isinstance(await self._call(node_id, "Deliver", merged), Failure):
                if trio.current_time() + backoff > deadline or node_id not in self.placement.nodes:
                    self.delivery_failures += 1
                    break
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)

    # --- peer service handlers ----------------------------------------------------------------

    def handlers(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "ForwardSends": self._h_forward_sends,
            "ProposeMeta": self._h_propose_meta,
            "Read": self._h_read,
            "Kick": self._h_kick,
            "Online": self._h_online,
            **self.extra_handlers,
        }

    def _leader_status(self, group: int) -> pb.Status | None:
        local = self.local.get(group)
        if local is None:
            return pb.Status(code=pb.Status.UNKNOWN_GROUP)
        if not local.is_leader():
            leader = local.leader_id()
            code = pb.Status.NOT_LEADER if leader else pb.Status.NO_LEADER
            return pb.Status(code=code, leader_hint=leader or 0)
        return None

    def _failure_status(self, group: int, kind: str) -> pb.Status:
        local = self.local.get(group)
        leader = local.leader_id() if local is not None else None
        code = {
            Failure.NOT_LEADER: pb.Status.NOT_LEADER,
            Failure.NO_LEADER: pb.Status.NO_LEADER,
        }.get(Failure.of(kind), pb.Status.TIMEOUT)
        return pb.Status(code=code, leader_hint=leader or 0)

    async def _h_forward_sends(self, req: pb.ForwardSendsRequest) -> pb.ForwardSendsReply:
        status = self._leader_status(req.group)
        if status is not None:
            return pb.ForwardSendsReply(status=status)
        pipeline = self.pipelines[req.group]
        # Submitted in order, synchronously: the items keep the sender's order in the log.
        slots = [submit_start(pipeline, item) for item in req.items]
        outcomes = []
        for slot in slots:
            result = await slot.wait(self.s.forward_timeout_s)
            # Items may have gone to Raft in different batches: each reports its own fate.
            if isinstance(result, Failure):
                result = pb.SendOutcome(failure=result)
            outcomes.append(result)
        return pb.ForwardSendsReply(status=pb.Status(code=pb.Status.OK), outcomes=outcomes)

    async def _h_propose_meta(self, req: pb.ProposeMetaRequest) -> pb.ProposeMetaReply:
        status = self._leader_status(req.group)
        if status is not None:
            return pb.ProposeMetaReply(status=status)
        local = self.local[req.group]
        try:
            raw = await local.propose(
                pb.Command(time_ms=int(time.time() * 1000), meta=req.op), self.s.proposal_timeout_s
            )
        except ProposalError as e:
            return pb.ProposeMetaReply(status=self._failure_status(req.group, e.kind))
        await local.make_durable()
        return pb.ProposeMetaReply(
            status=pb.Status(code=pb.Status.OK), result=pb.MetaResult.FromString(raw)
        )

    async def _h_read(self, req: pb.ReadRequest) -> pb.ReadReply:
        status = self._leader_status(req.group)
        if status is not None:
            return pb.ReadReply(status=status)
        try:
            result = await self.read_local(req.group, json.loads(req.query))
        except (QueryError, json.JSONDecodeError) as e:
            raise GrpcAbort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        if isinstance(result, Failure):
            return pb.ReadReply(status=self._failure_status(req.group, result))
        return pb.ReadReply(
            status=pb.Status(code=pb.Status.OK), result=json.dumps(result.value).encode()
        )

    def notices(self) -> dict[str, Notice]:
        """One-way peer RPCs (``cluster.bridge.Notice``): a delivery needs no answer beyond
        "received"; skipping the trio task and the hop back to the gRPC thread took node CPU
        at 300 sends/s in the bench from ~55 % to ~49 % of a core."""
        return {"Deliver": Notice(self.deliver, pb.DeliverReply)}

    async def _h_kick(self, req: pb.KickRequest) -> pb.KickReply:
        return pb.KickReply(kicked=self._kick_local(req))

    async def _h_online(self, req: pb.OnlineRequest) -> pb.OnlineReply:
        if self.online_levels_local is not None:
            levels = self.online_levels_local(list(req.uids))
            return pb.OnlineReply(
                entries=[pb.OnlineEntry(uid=u, device_flag=f, device_level=v) for u, f, v in levels]
            )
        entries = self._online_local(list(req.uids))
        return pb.OnlineReply(entries=[pb.OnlineEntry(uid=u, device_flag=f) for u, f in entries])

    # --- cluster-wide session operations ------------------------------------------------------

    def _other_nodes(self) -> list[int]:
        return [n for n in self.placement.nodes if n != self.s.node_id]

    async def kick_everywhere(self, uid: str, device_flag: int, reason: str) -> int:
        """Kick a uid's sessions on every node that answers (best effort, like presence)."""
        request = pb.KickRequest(uid=uid, device_flag=device_flag, reason=reason)
        kicked = self._kick_local(request)
        replies = await self._gather("Kick", request)
        return kicked + sum(int(r.kicked) for r in replies)

    async def online_everywhere(self, uids: list[str]) -> list[tuple[str, int]]:
        found = set(self._online_local(uids))
        for reply in await self._gather("Online", pb.OnlineRequest(uids=uids)):
            found.update((e.uid, e.device_flag) for e in reply.entries)
        return sorted(found)

    async def masters_online_everywhere(self, uids: list[str]) -> set[str]:
        """Which of ``uids`` have a master-level device online on a node that answers."""
        local = self.online_levels_local(uids) if self.online_levels_local is not None else []
        found = {u for u, _, level in local if level}
        for reply in await self._gather("Online", pb.OnlineRequest(uids=uids)):
            found.update(e.uid for e in reply.entries if e.device_level)
        return found

    async def call_other_nodes(self, method: str, request: Any) -> list[Any]:
        """``method`` on every other node; the replies of those that answered in time."""
        return await self._gather(method, request)

    async def call_each_other_node(
        self, method: str, request: Any, timeout_s: float
    ) -> dict[int, Any]:
        """``method`` on every other node; the replies of those that answered within
        ``timeout_s``, by node id."""
        replies: dict[int, Any] = {}

        async def one(node_id: int) -> None:
            reply = await self._call(node_id, method, request, timeout_s)
            if not isinstance(reply, Failure):
                replies[node_id] = reply

        async with trio.open_nursery() as nursery:
            for node_id in self._other_nodes():
                nursery.start_soon(one, node_id)
        return replies

    async def call_node(self, node_id: int, method: str, request: Any) -> Any:
        """``method`` on one node; its reply, or ``Failure.FORWARD_FAILED`` (best effort)."""
        return await self._call(node_id, method, request)

    async def _gather(self, method: str, request: Any) -> list[Any]:
        replies: list[Any] = []

        async def one(node_id: int) -> None:
            reply = await self._call(node_id, method, request)
            if not isinstance(reply, Failure):
                replies.append(reply)

        async with trio.open_nursery() as nursery:
            for node_id in self._other_nodes():
                nursery.start_soon(one, node_id)
        return replies


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


class _Forwarder:
    """Sends to one group's leader on one other node, batched: items queued within a moment
    travel in one ForwardSends call."""

    def __init__(self, router: Router, target: int, group: int) -> None:
        self._router = router
        self.target = target
        self.group = group
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
        return await self.start(item).wait(self._router.s.forward_timeout_s + 5)

    async def run(self) -> None:
        async for first in self._recv:
            batch = await gather(
                self._recv,
                first,
                window_s=self._router.s.forward_window_s,
                window_items=512,
                max_items=2048,
            )
            # One call at a time per (leader, group): a later batch never overtakes an
            # earlier one; what queues meanwhile rides in the next, bigger batch.
            await self._flush(batch)

    async def _flush(self, batch: list[tuple[pb.SendItem, SubmitSlot]]) -> None:
        request = pb.ForwardSendsRequest(group=self.group, items=[i for i, _ in batch])
        reply = await self._router._call(self.target, "ForwardSends", request)
        results: list[pb.SendOutcome | Failure]
        if isinstance(reply, Failure):
            results = [reply] * len(batch)
        elif failure := self._router.status_failure(self.group, reply.status):
            results = [failure] * len(batch)
        else:
            results = [Failure.of(o.failure) if o.failure else o for o in reply.outcomes]
        for (_, slot), result in zip(batch, results, strict=True):
            slot.result = result
            slot.done.set()
