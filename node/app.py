"""One raftchat node process: Raft groups, peer gRPC, gateway listeners and the HTTP API.

A single node is a one-node cluster: the same slot groups, Raft and router, with no peers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import ssl
import threading
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import trio

from cluster.aio_thread import AsyncioThread
from cluster.bridge import GrpcServer
from cluster.grpc_client import GrpcCallError, GrpcClients
from cluster.listen import ListenError, start_listener
from cluster.peer_stream import OutboundStreams
from cluster.peerauth import PeerKeys
from cluster.placement import Placement, from_json, initial_placement
from cluster.raft.conf import RaftTiming, make_conf
from cluster.raft.driver import RaftDriver
from cluster.raft.group import ReplicatedGroup
from cluster.raft.snapshot import CheckpointSnapshots
from cluster.stream_calls import CallStreams
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.raftchat.peer.v1 import peer_pb2_grpc

from .admin import REFUSED, Admin, code_of
from .backup_checkpoints import BackupCheckpoints
from .client_routes import ClientRoutes, own_endpoints
from .config import Config, is_loopback
from .controller import PLACEMENT_KEY, Controller, ControllerMachine
from .drain import Drain
from .dropped_groups import clear_dropped, mark_dropped, to_open
from .gateway.listeners import Gateway
from .gateway.session import GatewayContext
from .groups.local import CommitFlusher, LocalGroup
from .groups.machine import GroupMachine
from .groups.pipeline import GroupPipeline
from .grpcapi.servicer import PublicApi
from .grpcapi.subscribe import LiveFeed
from .http.api import build_router
from .http.common import ApiContext
from .http.listener import HttpServer
from .http.routes_monitoring import console_url
from .http.server import Router as HttpRouter
from .identity import DataDir, check
from .log import announce, close_stderr_capture, get_logger
from .metrics import NodeCollector, NodeMetrics
from .peer_calls import PEER_SERVICE, PeerStreams
from .presence import ClusterSessions
from .proctitle import name_compiled_threads
from .rate_limit import TokenBuckets
from .readiness import not_ready
from .reclaim import run_reclaim
from .router import Router, RouterSettings
from .sabotage import ACK_WITHOUT_COMMIT, SKIP_DEDUPE, AckCounter
from .send_checks import SendRules
from .sessions import DeviceLimits, SessionLike, SessionRegistry
from .startup import (
    EXIT_FAILED,
    StartupError,
    check_group_count,
    refused,
    startup_error_in,
    unavailable,
)
from .storage import MessageRecord, Store
from .tls import NodeTls
from .userfacts import UserFacts
from .usertokens import TokenKeys
from .webhooks import Webhooks
from .zone_report import report_zone

log = get_logger("node")

READY_POLL_S = 0.05


class Node:
    def __init__(self, config: Config, datadir: DataDir, tls: NodeTls | None = None) -> None:
        self.config = config
        self.datadir = datadir
        self.tls = tls
        """The checked ``[tls]`` files; None: no TLS anywhere."""
        self.stop_deadline = StopDeadline(config.node.shutdown_timeout_s)
        limits = DeviceLimits(
            app=config.devices.app_limit, web=config.devices.web_limit, pc=config.devices.pc_limit
        )
        self.registry = SessionRegistry(limits)
        self.metrics = NodeMetrics()
        # The public gRPC API (raftchat.v1); its Subscribe streams follow local deliveries.
        self.live = LiveFeed()
        self.public_api = PublicApi(self.live)
        self.endpoints: dict[str, str] = {}
        self.stores: dict[int, Store] = {}
        self.router: Router
        self.clients: GrpcClients
        self.driver: RaftDriver
        self.flusher: CommitFlusher
        self.admin: Admin | None = None
        self.webhooks: Webhooks | None = None
        self.facts: UserFacts | None = None
        self.controller: Controller | None = None
        self.cluster_sessions: ClusterSessions
        self.client_routes: ClientRoutes
        self.gateway: Gateway | None = None
        self.http: HttpServer | None = None
        self.drain = Drain(self)
        self.ready = False
        """Serving: set once the node has printed RAFTCHAT_READY."""
        self.exit_requested = trio.Event()
        """Set when the node should stop (a drain finished); ``_serve_until_signal`` stops it."""
        self._nursery: trio.Nursery | None = None
        # Never a Raft port without a password: pysyncobj unpickles whatever reaches an open
        # one. A lone node has no peer to share a secret with: it keeps one of its own in its
        # data directory, which also keys its user tokens (they must outlive a restart).
        local = datadir.local_secret(create=not config.cluster.password)
        self.raft_password = config.cluster.password or local or ""
        accepted = config.cluster.password_accepted
        # The peer calls' keys: signed with the password, also accepted under the other one.
        self.peer_keys = PeerKeys.of(self.raft_password, [accepted] if accepted else [])
        # What pysyncobj gets as its password (cluster/raft/wire.py: a pair while it changes).
        self.raft_passwords: str | tuple[str, ...] = (
            (self.raft_password, accepted) if accepted else self.raft_password
        )
        # Tokens sealed under a password being replaced, or by this node while it was alone
        # without a password, still log in (and are sealed again under the current key).
        self.token_keys = TokenKeys([config.cluster.password, accepted, local or ""])
        # Tests only (``testing.sabotage``; the config refuses it without the guard variable).
        sabotage = config.testing.sabotage
        self.fake_acks = AckCounter() if sabotage == ACK_WITHOUT_COMMIT else None
        self.skip_dedupe = sabotage == SKIP_DEDUPE
        c = config.cluster
        self.timing = RaftTiming(
            heartbeat_s=c.heartbeat_s,
            election_min_s=c.election_min_s,
            election_max_s=c.election_max_s,
            connection_timeout_s=c.election_max_s,
            tick_interval_s=c.heartbeat_s / 2,
        )

    # --- local session operations -------------------------------------------------------------

    def deliver_local(
        self, msg: MessageRecord | pb.EventPush, uids: list[str], origin_conn: int | None
    ) -> None:
        if isinstance(msg, MessageRecord):
            self.live.publish(msg, uids)  # gRPC Subscribe streams (stream events are not theirs)
        for uid in uids:
            for session in self.registry.of(uid):
                if session.conn_id != origin_conn:
                    session.push(msg)
                    self.metrics.deliveries += 1

    def kick_local(self, req: pb.KickRequest) -> int:
        from proto.wkproto import ReasonCode

        flag = None if req.device_flag < 0 else req.device_flag
        sessions = self.registry.of_flag(req.uid, flag)
        if req.conn_ids:
            wanted = set(req.conn_ids)
            sessions = [s for s in sessions if s.conn_id in wanted]
        for s in sessions:
            if req.quiet:
                s.close()
            else:
                s.kick(ReasonCode.CONNECT_KICK, req.reason)
        return len(sessions)

    def online_local(self, uids: list[str]) -> list[tuple[str, int]]:
        return sorted({(s.uid, s.device_flag) for uid in uids for s in self.registry.of(uid)})

    def online_levels_local(self, uids: list[str]) -> list[tuple[str, int, int]]:
        """(uid, device flag, highest device level): presence for msg.offline."""
        levels: dict[tuple[str, int], int] = {}
        for uid in uids:
            for s in self.registry.of(uid):
                key = (s.uid, s.device_flag)
                levels[key] = max(levels.get(key, 0), s.device_level)
        return sorted((u, f, v) for (u, f), v in levels.items())

    # --- leaving service -----------------------------------------------------------------------

    async def admin_call(self, request: dict[str, Any]) -> dict[str, Any]:
        """An admin operation on this node (``node/admin.py``)."""
        assert self.admin is not None
        return await self.admin.call(self.config.node.id, request)

    async def drain_and_exit(self) -> None:
        """Drain (``node/drain.py``), then stop; within ``node.shutdown_timeout_s``."""
        self.stop_deadline.arm()
        try:
            await self.drain.run()
        finally:
            self.exit_requested.set()

    def start_drain(self) -> None:
        """Drain and exit, in the background (``raftchat cluster drain``)."""
        assert self._nursery is not None
        if not self.drain.started:
            self._nursery.start_soon(self.drain_and_exit)

    # --- addresses --------------------------------------------------------------------------

    def raft_address(self, node_id: int, group: int) -> str:
        return f"{self.router.placement.nodes[node_id]}:{self.config.cluster.raft_port + group}"

    def node_of_address(self, address: str) -> int | None:
        host, _, port = address.rpartition(":")
        group = int(port) - self.config.cluster.raft_port
        for node_id, node_host in self.router.placement.nodes.items():
            if node_host == host and 0 <= group <= self.config.cluster.groups:
                return node_id
        return None

    # --- replicas -----------------------------------------------------------------------------

    def _group_dir(self, group: int) -> Path:
        name = "controller" if group == 0 else f"groups/g{group}"
        return self.datadir.path / name

    def _raft(
        self, group: int, members: list[int], machine: Any, snapshots: CheckpointSnapshots
    ) -> concurrent.futures.Future[ReplicatedGroup]:
        me = self.config.node.id
        gdir = self._group_dir(group)
        address = self.raft_address(me, group)
        conf = make_conf(
            password=self.raft_passwords,
            bind_address=address,
            journal_file=str(gdir / "raft.journal"),
            dump_file=str(gdir / "raft.dump"),
            snapshots=snapshots,
            timing=self.timing,
        )
        partners = [self.raft_address(n, group) for n in members if n != me]
        return self.driver.add_group(
            f"g{group}", lambda: ReplicatedGroup(address, partners, conf, machine, snapshots)
        )

    async def _start_raft(
        self, group: int, members: list[int], machine: Any, snapshots: CheckpointSnapshots
    ) -> ReplicatedGroup:
        """Build the group on the driver thread. A stop does not wait for the build: the driver
        destroys whatever it has built when it stops."""
        future = self._raft(group, members, machine, snapshots)
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    async def open_group(self, group: int, members: list[int]) -> None:
        """Start this node's replica of a slot group (empty if new: it catches up from the
        leader's log or a snapshot)."""
        cfg = self.config
        gdir = self._group_dir(group)
        store = Store(gdir / "db")
        self.stores[group] = store
        machine = GroupMachine(group, store, skip_dedupe=self.skip_dedupe)
        snapshots = CheckpointSnapshots(machine, gdir / "snapshots")
        raft = await self._start_raft(group, members, machine, snapshots)
        local = LocalGroup(group, store, machine, raft, self.node_of_address, self.flusher)
        pipeline = GroupPipeline(
            local,
            self.router.fanout.on_committed,
            commit_window_s=cfg.messages.commit_window_ms / 1000,
            max_batch=cfg.messages.max_batch,
            max_in_flight=cfg.messages.max_in_flight_batches,
            proposal_timeout_s=cfg.cluster.proposal_timeout_s,
            fake_acks=self.fake_acks,
            group_rate_limit=cfg.messages.group_rate_limit,
            observe_commit=self.metrics.commit_seconds.observe,
        )
        self.router.attach(local, pipeline)
        await trio.to_thread.run_sync(clear_dropped, self.datadir.path, group)
        log.info("replica opened", group=group, members=members)

    async def drop_group(self, group: int) -> None:
        """Stop this node's replica of a group that moved elsewhere, and delete its data."""
        if group not in self.router.local:
            return
        pipeline = self.router.pipelines.get(group)
        if pipeline is not None:
            with trio.move_on_after(self.config.cluster.proposal_timeout_s + 1):
                await pipeline.close()  # queued sends fail over; batches in Raft finish first
        self.router.detach(group)
        removed = self.driver.remove_group(f"g{group}")
        await trio.to_thread.run_sync(removed.result, abandon_on_cancel=True)
        store = self.stores.pop(group, None)
        if store is not None:
            store.close()
        await trio.to_thread.run_sync(mark_dropped, self.datadir.path, group)
        await trio.to_thread.run_sync(shutil.rmtree, self._group_dir(group), True)
        log.info("replica dropped", group=group)

    # --- startup ----------------------------------------------------------------------------

    async def _genesis(self) -> Placement:
        """The first cluster map: computed from ``cluster.nodes`` by every initial member, or
        received from the cluster when this node joins through ``cluster.join``: its signed
        call is what admits it (``node/admin.py``)."""
        cfg = self.config
        if not cfg.cluster.join:
            return initial_placement(cfg.cluster_nodes(), cfg.cluster.groups, cfg.cluster.replicas)
        seed = f"{cfg.cluster.join}:{cfg.cluster.grpc_port}"
        request = {"op": "join", "node_id": cfg.node.id, "host": cfg.node.host}
        if cfg.node.zone:
            request["zone"] = cfg.node.zone
        deadline = trio.current_time() + 60
        while True:
            try:
                raw = await self.clients.get(seed).call(
                    "Admin", pb.AdminRequest(request=json.dumps(request).encode()), timeout_s=30
                )
                reply = json.loads(raw.reply)
                if "placement" in reply:
                    # Recorded before the map is used: a restart then knows whose data this is.
                    # (A member too old to send its cluster's id leaves this node one of its own.)
                    cluster_id = reply.get("cluster_id") or secrets.token_hex(8)
                    placement = from_json(reply["placement"])
                    self.datadir.joined(cluster_id, cfg.cluster.password, len(placement.groups))
                    return placement
                error = reply.get("error")
                if error is not None and code_of(reply) == REFUSED:
                    # Asking again would get the same answer.
                    raise refused(f"the cluster refused to admit this node via {seed}: {error}")
            except GrpcCallError as e:
                error = str(e)
                if e.code.name == "UNAUTHENTICATED":
                    error += (
                        " (another cluster.password, cluster.join not a member's node.host, "
                        "or clocks more than 30 s apart)"
                    )
            if trio.current_time() > deadline:
                raise RuntimeError(f"could not join through {seed}: {error}")
            log.info("join not accepted yet, retrying", seed=seed, error=error)
            await trio.sleep(0.5)

    async def _open_controller(self) -> None:
        cfg = self.config
        gdir = self._group_dir(0)
        store = Store(gdir / "db")
        self.stores[0] = store
        # A restart continues from the stored map; a first start computes or fetches one.
        stored = store.get_state(PLACEMENT_KEY) is not None
        genesis = Placement(0, [], {}, {}) if stored else await self._genesis()
        machine = ControllerMachine(store, genesis)
        self.router.placement = machine.current()
        if self.router.placement.groups:
            check_group_count(len(self.router.placement.groups), cfg, "the cluster map")
            if stored:  # a map the cluster wrote, not one computed from this configuration
                self.datadir.slot_groups_known(len(self.router.placement.groups))
        if len(self.router.placement.nodes) > 1:
            # A stored map of several members (say, of a directory adopted from before identity
            # files, or a lone node that others joined): the directory is a multi-node one, and
            # a lone node's configuration is refused before any Raft group runs.
            self.datadir.grew()
            check(self.datadir.identity, cfg, self.datadir.path)
        token = trio.lowlevel.current_trio_token()

        def changed(placement: Placement) -> None:  # on the Raft driver thread
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._placement_changed, placement)

        # Before the group starts ticking: no applied change may slip past the router.
        machine.on_change = changed
        snapshots = CheckpointSnapshots(machine, gdir / "snapshots")
        members = sorted(self.router.placement.nodes)
        raft = await self._start_raft(0, members, machine, snapshots)
        local = LocalGroup(0, store, machine, raft, self.node_of_address)  # type: ignore[arg-type]
        self.router.attach(local, None)
        self.router.set_placement(machine.current())  # anything applied while starting
        self.admin = Admin(self)
        self.controller = Controller(
            cfg.node.id,
            local,
            machine,
            cfg.cluster.replicas,
            self.admin.call,
            cfg.cluster.proposal_timeout_s,
            draining=lambda: self.client_routes.draining_nodes(),
        )

    async def _report_zone(self) -> None:
        """Have the map record ``node.zone`` if it does not (``node/zone_report.py``)."""
        assert self.admin is not None
        me = self.config.node.id
        await report_zone(
            me,
            self.config.node.zone,
            lambda: self.router.placement.zones.get(me, ""),
            self.admin.on_controller_leader,
        )

    def _placement_changed(self, placement: Placement) -> None:
        self.router.set_placement(placement)
        if len(placement.nodes) > 1 and not self.datadir.identity.multi_node:
            try:
                self.datadir.grew()
            except StartupError as e:  # tried again at the next change and the next start
                log.error("cannot record that the cluster has several members", error=str(e))
            else:
                # (No cluster id in the line: a genesis id is derived from the password.)
                log.info(
                    "the cluster has several members: this data directory will not start "
                    "as a lone node again"
                )

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        if cfg.auth.api_open:
            log.warning(
                "auth.api_open: the HTTP API and the public gRPC API take no credential; "
                "anyone who reaches them can act as any user",
                hosts=",".join(cfg.api_hosts()),
            )
        if not cfg.auth.token_auth:
            log.warning(
                "auth.token_auth = false: every CONNECT logs in, whatever its token; anyone "
                "who reaches the gateway can act as any user"
            )
        if not is_loopback(cfg.node.host) and not (self.tls and self.tls.ca):
            log.warning(
                "peer gRPC without tls.ca_file: calls between nodes and their replies are "
                "signed but not encrypted; keep the nodes' network private (docs/security.md)",
                host=cfg.node.host,
            )
        if cfg.testing.sabotage:
            log.warning(
                "SABOTAGE ACTIVE: this node has a deliberate bug that loses or duplicates "
                "messages; for tests only, never run it in production",
                sabotage=cfg.testing.sabotage,
            )
        host = cfg.node.host
        # A lone node without a password gets the random one (never None): its peer service must
        # not be open to anyone who reaches the port.
        tls = self.tls
        for warning in tls.warnings if tls is not None else ():
            log.warning(warning)
        # Mutual TLS between peers when tls.ca_file is set; plain otherwise.
        peer_channel = tls.peer_channel_credentials() if tls is not None else None
        self.clients = GrpcClients(peer_pb2_grpc.PeerStub, self.peer_keys, peer_channel)
        grpc_loop = AsyncioThread("grpc-servers")  # both servers and the streams on one loop
        streams = PeerStreams(
            OutboundStreams(self.peer_keys, grpc_loop, peer_channel),
            CallStreams(self.peer_keys, grpc_loop, f"/{PEER_SERVICE}/Calls", peer_channel),
        )
        self.driver = RaftDriver(self.timing.tick_interval_s, name=f"node{cfg.node.id}")
        self.driver.start()
        self.flusher = CommitFlusher(self.driver)
        try:
            self.router = Router(
                RouterSettings(
                    node_id=cfg.node.id,
                    grpc_port=cfg.cluster.grpc_port,
                    forward_timeout_s=cfg.cluster.forward_timeout_s,
                    proposal_timeout_s=cfg.cluster.proposal_timeout_s,
                ),
                Placement(0, [], {}, {}),
                self.clients,
                self.deliver_local,
                self.kick_local,
                self.online_local,
                streams,
            )
            self.router.sessions.online_levels_local = self.online_levels_local
            self.metrics.registry.register(
                NodeCollector(
                    self.metrics, self.router, lambda: self.webhooks, lambda: self.gateway
                )
            )
            self.cluster_sessions = ClusterSessions(
                self.registry,
                self.registry.limits,
                self.router.call_each_other_node,
                self.router.call_node,
            )
            if cfg.webhook.url:
                self.webhooks = Webhooks(
                    cfg.webhook,
                    cfg.node.id,
                    self.registry,
                    self.router.sessions.masters_online_everywhere,
                )
                self.router.fanout.commit_hooks.append(self.webhooks.on_committed)
                self.registry.listeners.append(self.webhooks.on_session)
            try:
                await self._open_controller()
                listed = self.router.placement.groups_of_node(cfg.node.id)
                opening = to_open(self.datadir.path, listed)
                for gid in opening:
                    await self.open_group(gid, self.router.placement.replicas(gid))
                for gid in sorted(set(listed) - set(opening)):
                    log.warning(
                        "not reopening a replica this node dropped (the map it has is older "
                        "than the move; the controller brings it back if it is wanted)",
                        group=gid,
                    )
            except ListenError as e:  # a Raft port
                raise unavailable(str(e)) from None
            assert self.admin is not None and self.controller is not None
            self.router.extra_handlers["Admin"] = self.admin.rpc
            self.facts = UserFacts(self.router)
            self.router.extra_handlers["Invalidate"] = self.facts.rpc
            self.router.extra_handlers["Sessions"] = self.cluster_sessions.rpc_sessions
            self.client_routes = ClientRoutes(
                cfg.node.id,
                own_endpoints(cfg),
                lambda: self.router.placement.nodes,
                self.router.call_each_other_node,
            )
            self.router.extra_handlers["Endpoints"] = self.client_routes.rpc_endpoints
            grpc_server = GrpcServer(
                bind=f"{host}:{cfg.cluster.grpc_port}",
                peer_auth=self.peer_keys,
                add_to_server=peer_pb2_grpc.add_PeerServicer_to_server,
                servicer_base=peer_pb2_grpc.PeerServicer,
                handlers=self.router.handlers(),
                notices=self.router.notices(),
                inbound=self.router.inbound(),
                calls="Calls",
                what="peer gRPC",
                credentials=tls.peer_server_credentials() if tls is not None else None,
                loop_thread=grpc_loop,
            )
            # The public API on a port of its own, so that the peer port can be closed to all
            # but the cluster's nodes (it checks the API token, not the peer token).
            public_grpc = GrpcServer.of_services(
                f"{host}:{cfg.grpc.port}",
                self.public_api.services(),
                what="public gRPC",
                # TLS for clients with a certificate; no client certificate asked for.
                credentials=tls.public_grpc_credentials() if tls is not None else None,
                # The HTTP API's body limit: the same requests, and no more for a stranger to
                # make the node buffer before its token is checked.
                max_message_bytes=cfg.http.max_body_bytes,
                loop_thread=grpc_loop,
            )
            async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as serving:
                self._nursery = nursery
                try:
                    await serving.enter_async_context(grpc_server.serving())
                except ListenError as e:
                    raise unavailable(str(e)) from None
                await nursery.start(self.router.run)
                if self.webhooks is not None:
                    await nursery.start(self.webhooks.run)
                nursery.start_soon(self.controller.run)
                nursery.start_soon(self._report_zone)
                nursery.start_soon(run_reclaim, self.router, cfg.messages.retention_days)
                nursery.start_soon(self.client_routes.run)
                await self._serve_clients(nursery, self.router)
                try:
                    await serving.enter_async_context(public_grpc.serving())
                except ListenError as e:
                    raise unavailable(str(e)) from None
                log.info("listening; waiting until ready (as GET /readyz says)")
                said: list[str] = []
                while reasons := not_ready(self.router.local):
                    if reasons != said:  # what it waits for, once per change
                        log.info("not ready yet", reasons="; ".join(reasons))
                        said = reasons
                    await trio.sleep(READY_POLL_S)  # waiting on elections, which signal nothing
                log.info("node ready", **self.endpoints)
                name_compiled_threads()  # grpc's poller exists once the servers serve
                # One machine-readable line on stdout: supervisors (dev, tests, chaos) wait for it.
                print("RAFTCHAT_READY " + json.dumps(self.endpoints), flush=True)
                self.ready = True
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self.stop_deadline.arm()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.driver.stop)
                await trio.to_thread.run_sync(self.flusher.stop)  # after the driver's last pass
            self.clients.close_all()
            with trio.CancelScope(shield=True):
                await streams.aclose()
            if self.driver.thread.is_alive():
                # Still inside a group's code after its stop timeout: it may yet touch the
                # stores, so they stay open (the process is about to exit; RocksDB recovers).
                log.warning("raft driver did not stop in time; leaving the stores open")
            else:
                # Without a garbage collection per store (~0.1 s each, most of a stop): the
                # process ends next, and with it the hold on their LOCK files.
                for store in self.stores.values():
                    store.close(collect=False)

    async def _serve_clients(self, nursery: trio.Nursery, router: Router) -> None:
        cfg = self.config
        host = cfg.node.host
        assert self.facts is not None
        rules = SendRules(
            cfg.messages.person_whitelist, TokenBuckets(cfg.messages.person_rate_limit)
        )
        sessions = self.cluster_sessions

        def on_login(session: SessionLike) -> None:
            nursery.start_soon(sessions.enforce, session)

        # WSS and HTTPS share one context: the node's certificate, no client certificates.
        ssl_context = self.tls.server_context() if self.tls is not None else None
        self.gateway = gateway = Gateway(
            GatewayContext(
                cfg,
                self.registry,
                router,
                nursery,
                self.facts,
                rules,
                on_login,
                token_keys=self.token_keys,
                metrics=self.metrics,
            ),
            ssl_context,
        )
        assert self.admin is not None
        api = ApiContext(
            cfg,
            self.registry,
            router,
            self.admin,
            self.facts,
            rules,
            self.webhooks,
            self.client_routes,
            token_keys=self.token_keys,
            metrics=self.metrics,
            backups=BackupCheckpoints(self.datadir.path, self.datadir.identity.cluster_id),
        )
        http_router = build_router(api)
        self.public_api.attach(http_router, api)
        self.http = http = HttpServer(http_router, cfg.http, ssl_context if cfg.http.tls else None)
        hosts = [host] + ([cfg.http.also_host] if cfg.http.also_host not in ("", host) else [])
        try:
            for http_host in hosts:
                serve = partial(http.serve, http_host, cfg.http.port)
                await start_listener(nursery, "HTTP", http_host, cfg.http.port, serve)
            await gateway.serve(nursery, host)
            console_url = await self._serve_console(nursery, http_router, ssl_context)
        except ListenError as e:
            raise unavailable(str(e)) from None
        tcp_port = cfg.gateway.tcp_port
        self.endpoints = {
            "node_id": str(cfg.node.id),
            "http": f"{'https' if cfg.http.tls else 'http'}://{host}:{cfg.http.port}",
            "tcp": f"{host}:{tcp_port}",
            "ws": f"ws://{host}:{cfg.gateway.ws_port}",
            "grpc": f"{host}:{cfg.grpc.port}",
            "peer": f"{host}:{cfg.cluster.grpc_port}",
        }
        if ssl_context is not None:
            self.endpoints["wss"] = f"wss://{host}:{cfg.gateway.wss_port}"
        if console_url:
            self.endpoints["console"] = console_url

    async def _serve_console(
        self, nursery: trio.Nursery, api: HttpRouter, ssl_context: ssl.SSLContext | None
    ) -> str:
        """Start the web console (``docs/console.md``) if it is to be served; its URL, or ""."""
        cfg = self.config
        if not cfg.console.enabled:
            return ""
        assert api.credentials is not None
        if not api.credentials.admin_configured:
            log.info(
                "web console not served: it needs auth.admin_token (set it, or "
                "console.enabled = false to say so)",
                port=cfg.console.port,
            )
            return ""
        # Imported here: they bring an HTTP client (httpx), which a node without the console
        # has no use for.
        from .console.forward import Forwarder
        from .console.routes import ConsoleContext, build_console_router

        https = cfg.http.tls
        forwarder = Forwarder(
            cfg.http.port,
            https,
            cfg.auth.api_token or None,
            cfg.auth.admin_token,
            cfg.tls.ca_file if https else "",
        )
        router = build_console_router(
            ConsoleContext(
                node_id=cfg.node.id,
                api=api,
                credentials=api.credentials,
                members=lambda: dict(self.router.placement.nodes),
                forwarder=forwarder,
                admin_token=cfg.auth.admin_token,
                https=https,
            )
        )
        server = HttpServer(router, cfg.http, ssl_context if https else None)
        host, port = cfg.node.host, cfg.console.port
        await start_listener(nursery, "console", host, port, partial(server.serve, host, port))
        return console_url(cfg)


class StopDeadline:
    """Once a node starts to stop (a signal, or a failed start), it exits within
    ``node.shutdown_timeout_s`` whatever it is waiting for: a thread outside trio's control
    (a Raft group's code, grpcio) cannot keep it running."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.timeout_s, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        announce(
            f"node did not stop within node.shutdown_timeout_s = {self.timeout_s:g} s; exiting",
            logging.ERROR,
        )
        close_stderr_capture()  # os._exit skips atexit: log the line above first
        os._exit(EXIT_FAILED)


async def _serve_until_signal(node: Node) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)  # if it fails, the nursery stops waiting for signals
            nursery.start_soon(_on_signals, node, signals, nursery)
            await node.exit_requested.wait()
            nursery.cancel_scope.cancel()


async def _on_signals(node: Node, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
    """SIGTERM drains the node, then stops it; SIGINT stops it now, as SIGTERM does a node
    still starting (it has nothing to drain). A SIGTERM during a drain changes nothing: the
    drain ends in a stop, within ``node.shutdown_timeout_s`` of its start."""
    async for signum in signals:
        name = signal.Signals(signum).name
        node.stop_deadline.arm()
        if signum == signal.SIGTERM and node.ready:
            if node.drain.started:
                log.info("already draining; stopping once drained", signal=name)
            else:
                log.info("draining on signal, then stopping", signal=name)
                nursery.start_soon(node.drain_and_exit)
            continue
        log.info("stopping on signal", signal=name)
        node.exit_requested.set()
        return


def run_node(config: Config, datadir: DataDir, tls: NodeTls | None = None) -> int:
    """Run a node on its opened data directory until a signal; the exit code
    (``node/startup.py``). A node that cannot start says why in one line on stderr."""
    try:
        trio.run(_serve_until_signal, Node(config, datadir, tls))
    except (StartupError, BaseExceptionGroup) as e:
        error = startup_error_in(e)
        if error is None:
            raise
        announce(str(error), logging.ERROR)
        return error.code
    announce("node stopped")
    return 0
