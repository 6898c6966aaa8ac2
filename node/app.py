"""One raftchat node process: Raft groups, peer gRPC, gateway listeners and the HTTP API.

A single node is a one-node cluster: the same slot groups, Raft and router, with no peers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import trio

from cluster.aio_thread import AsyncioThread
from cluster.grpc_client import GrpcClients
from cluster.listen import ListenError, start_listener
from cluster.placement import Placement
from cluster.raft.driver import RaftDriver
from cluster.raft.snapshot import CheckpointSnapshots
from proto.raftchat.peer.v1 import peer_pb2 as pb

from . import compose
from .admin import Admin
from .backup_checkpoints import BackupCheckpoints
from .client_routes import ClientRoutes, own_endpoints
from .config import Config
from .controller import PLACEMENT_KEY, Controller, ControllerMachine
from .drain import Drain
from .dropped_groups import to_open
from .gateway.listeners import Gateway
from .gateway.session import GatewayContext
from .genesis import first_placement
from .groups.local import CommitFlusher, LocalGroup
from .grpcapi.servicer import PublicApi
from .grpcapi.subscribe import LiveFeed
from .http.api import build_router
from .http.common import ApiContext
from .http.listener import HttpServer
from .identity import DataDir, check
from .log import announce, close_stderr_capture, get_logger
from .metrics import NodeCollector, NodeMetrics
from .peer_calls import PeerStreams
from .presence import ClusterSessions
from .proctitle import name_compiled_threads
from .rate_limit import TokenBuckets
from .readiness import not_ready
from .reclaim import run_reclaim
from .replicas import RaftSettings, Replicas, raft_timing
from .router import Router
from .send_checks import SendRules
from .sessions import DeviceLimits, SessionLike, SessionRegistry
from .startup import (
    EXIT_FAILED,
    StartupError,
    check_group_count,
    startup_error_in,
    unavailable,
)
from .storage import MessageRecord
from .tls import NodeTls
from .userfacts import UserFacts
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
        self.secrets = compose.secrets_of(config, datadir)
        # Built at start (``_build_parts``), in this order.
        self.clients: GrpcClients
        self.webhooks: Webhooks | None = None
        self.router: Router
        self.cluster_sessions: ClusterSessions
        self.client_routes: ClientRoutes
        self.replicas: Replicas
        self.admin: Admin
        self.facts: UserFacts
        self.controller: Controller | None = None
        self.gateway: Gateway | None = None
        self.http: HttpServer | None = None
        self.drain = Drain(self)
        self.ready = False
        """Serving: set once the node has printed RAFTCHAT_READY."""
        self.exit_requested = trio.Event()
        """Set when the node should stop (a drain finished); ``_serve_until_signal`` stops it."""
        self._nursery: trio.Nursery | None = None

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

    # --- start-up ---------------------------------------------------------------------------

    def _build_parts(
        self,
        clients: GrpcClients,
        streams: PeerStreams,
        driver: RaftDriver,
        flusher: CommitFlusher,
    ) -> Replicas:
        """Every part that serves once the groups are open (``node/compose.py``); returns the
        replicas, whose stores a stop closes."""
        cfg = self.config
        self.clients = clients
        # Webhooks ask the router who is online; the router feeds them committed batches.
        self.webhooks = webhooks = compose.build_webhooks(
            cfg, self.registry, lambda uids: router.sessions.masters_online_everywhere(uids)
        )
        hooks = [webhooks.on_committed] if webhooks is not None else []
        self.router = router = compose.build_router(cfg, clients, streams, self, hooks)
        self.metrics.registry.register(
            NodeCollector(self.metrics, router, lambda: self.webhooks, lambda: self.gateway)
        )
        self.cluster_sessions = compose.cluster_sessions(self.registry, router)
        self.client_routes = ClientRoutes(
            cfg.node.id,
            own_endpoints(cfg),
            lambda: router.placement.nodes,
            router.call_each_other_node,
        )
        self.replicas = Replicas(
            cfg,
            self.datadir.path,
            RaftSettings(self.secrets.raft_passwords, raft_timing(cfg)),
            router,
            driver,
            flusher,
            self.metrics.commit_seconds.observe,
        )
        self.admin = Admin(
            cfg.node.id,
            router,
            clients,
            self.replicas,
            lambda: self.controller,
            cluster_id=lambda: self.datadir.identity.cluster_id,
            peer_draining=self.client_routes.peer_draining,
            start_drain=self.start_drain,
        )
        self.facts = UserFacts(router)
        return self.replicas

    async def _open_controller(self) -> Controller:
        cfg = self.config
        store = self.replicas.open_store(0)
        # A restart continues from the stored map; a first start computes or fetches one.
        stored = store.get_state(PLACEMENT_KEY) is not None
        genesis = (
            Placement(0, [], {}, {})
            if stored
            else await first_placement(cfg, self.clients, self.datadir)
        )
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
        snapshots = CheckpointSnapshots(machine, self.replicas.group_dir(0) / "snapshots")
        members = sorted(self.router.placement.nodes)
        raft = await self.replicas.start_raft(0, members, machine, snapshots)
        local = LocalGroup(0, store, machine, raft, self.replicas.node_of_address)  # type: ignore[arg-type]
        self.router.attach(local, None)
        self.router.set_placement(machine.current())  # anything applied while starting
        return Controller(
            cfg.node.id,
            local,
            machine,
            cfg.cluster.replicas,
            self.admin.call,
            cfg.cluster.proposal_timeout_s,
            draining=self.client_routes.draining_nodes,
        )

    async def _open_groups(self) -> None:
        """The controller group, then this node's replicas of slot groups as its map lists
        them (but not those it dropped: ``node/dropped_groups.py``)."""
        try:
            self.controller = await self._open_controller()
            listed = self.router.placement.groups_of_node(self.config.node.id)
            opening = to_open(self.datadir.path, listed)
            for gid in opening:
                await self.replicas.open_group(gid, self.router.placement.replicas(gid))
            for gid in sorted(set(listed) - set(opening)):
                log.warning(
                    "not reopening a replica this node dropped (the map it has is older "
                    "than the move; the controller brings it back if it is wanted)",
                    group=gid,
                )
        except ListenError as e:  # a Raft port
            raise unavailable(str(e)) from None

    async def _report_zone(self) -> None:
        """Have the map record ``node.zone`` if it does not (``node/zone_report.py``)."""
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
        compose.warn_open_doors(cfg, self.tls)
        clients = compose.peer_clients(self.secrets, self.tls)
        # Both gRPC servers and the streams to other nodes share one asyncio loop.
        self.grpc_loop = AsyncioThread("grpc-servers")
        streams = compose.peer_streams(self.secrets, self.tls, self.grpc_loop)
        driver = RaftDriver(raft_timing(cfg).tick_interval_s, name=f"node{cfg.node.id}")
        driver.start()
        flusher = CommitFlusher(driver)
        replicas: Replicas | None = None
        try:
            replicas = self._build_parts(clients, streams, driver, flusher)
            await self._open_groups()
            await self._serve(task_status)
        finally:
            self.stop_deadline.arm()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(driver.stop)
                await trio.to_thread.run_sync(flusher.stop)  # after the driver's last pass
            clients.close_all()
            with trio.CancelScope(shield=True):
                await streams.aclose()
            if driver.thread.is_alive():
                # Still inside a group's code after its stop timeout: it may yet touch the
                # stores, so they stay open (the process is about to exit; RocksDB recovers).
                log.warning("raft driver did not stop in time; leaving the stores open")
            elif replicas is not None:
                replicas.close_stores()

    async def _serve(self, task_status: trio.TaskStatus[Node]) -> None:
        """Serve peers, then clients; say RAFTCHAT_READY once ready; serve until cancelled."""
        assert self.controller is not None
        handlers = compose.peer_handlers(
            self.router, self.admin, self.facts, self.cluster_sessions, self.client_routes
        )
        grpc_server, public_grpc = compose.grpc_servers(
            self.config,
            self.tls,
            self.secrets,
            self.router,
            handlers,
            self.public_api,
            self.grpc_loop,
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
            nursery.start_soon(run_reclaim, self.router, self.config.messages.retention_days)
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

    async def _serve_clients(self, nursery: trio.Nursery, router: Router) -> None:
        cfg = self.config
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
                token_keys=self.secrets.token_keys,
                metrics=self.metrics,
            ),
            ssl_context,
        )
        api = ApiContext(
            cfg,
            self.registry,
            router,
            self.admin,
            self.facts,
            rules,
            self.webhooks,
            self.client_routes,
            token_keys=self.secrets.token_keys,
            metrics=self.metrics,
            backups=BackupCheckpoints(self.datadir.path, self.datadir.identity.cluster_id),
        )
        http_router = build_router(api)
        self.public_api.attach(http_router, api)
        self.http = http = HttpServer(http_router, cfg.http, ssl_context if cfg.http.tls else None)
        host = cfg.node.host
        hosts = [host] + ([cfg.http.also_host] if cfg.http.also_host not in ("", host) else [])
        try:
            for http_host in hosts:
                serve = partial(http.serve, http_host, cfg.http.port)
                await start_listener(nursery, "HTTP", http_host, cfg.http.port, serve)
            await gateway.serve(nursery, host)
            console = await compose.serve_console(
                nursery, cfg, http_router, ssl_context, lambda: dict(self.router.placement.nodes)
            )
        except ListenError as e:
            raise unavailable(str(e)) from None
        self.endpoints = compose.endpoints(cfg, ssl_context is not None, console)


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
