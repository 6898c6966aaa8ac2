"""One raftchat node process: Raft groups, peer gRPC, gateway listeners and the HTTP API.

A single node is a one-node cluster: the same slot groups, Raft and router, with no peers.
"""

from __future__ import annotations

import json
import signal
import sys
from functools import partial
from pathlib import Path

import trio
from pysyncobj import SyncObjConf
from trio_websocket import WebSocketRequest, serve_websocket

from cluster.bridge import GrpcClients, GrpcServer, peer_token
from cluster.placement import Placement, initial_placement
from cluster.raft.conf import RaftTiming, make_conf
from cluster.raft.driver import RaftDriver
from cluster.raft.group import ReplicatedGroup
from cluster.raft.snapshot import CheckpointSnapshots
from proto.raftchat.peer.v1 import peer_pb2_grpc
from proto.wkproto import MAX_REMAINING_LENGTH

from .config import Config
from .gateway.session import GatewayContext, Session
from .gateway.transport import TcpTransport, WsTransport
from .groups.local import LocalGroup
from .groups.machine import GroupMachine
from .groups.pipeline import GroupPipeline
from .http.api import ApiContext, build_router
from .http.server import HttpServer
from .log import get_logger
from .router import Router, RouterSettings
from .sessions import DeviceLimits, SessionRegistry
from .storage import MessageRecord, Store

log = get_logger("node")

READY_POLL_S = 0.05


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        limits = DeviceLimits(
            app=config.devices.app_limit, web=config.devices.web_limit, pc=config.devices.pc_limit
        )
        self.registry = SessionRegistry(limits)
        self.endpoints: dict[str, str] = {}
        c = config.cluster
        self.timing = RaftTiming(
            heartbeat_s=c.heartbeat_s,
            election_min_s=c.election_min_s,
            election_max_s=c.election_max_s,
            connection_timeout_s=c.election_max_s,
            tick_interval_s=c.heartbeat_s / 2,
        )

    # --- local session operations -------------------------------------------------------------

    def deliver_local(self, msg: MessageRecord, uids: list[str], origin_conn: int | None) -> None:
        for uid in uids:
            for session in self.registry.of(uid):
                if session.conn_id != origin_conn:
                    session.push(msg)

    def kick_local(self, uid: str, device_flag: int, reason: str) -> int:
        from proto.wkproto import ReasonCode

        sessions = self.registry.of_flag(uid, None if device_flag < 0 else device_flag)
        for s in sessions:
            s.kick(ReasonCode.CONNECT_KICK, reason)
        return len(sessions)

    def online_local(self, uids: list[str]) -> list[tuple[str, int]]:
        return sorted({(s.uid, s.device_flag) for uid in uids for s in self.registry.of(uid)})

    # --- startup ----------------------------------------------------------------------------

    def _raft_address(self, placement: Placement, node_id: int, group: int) -> str:
        return f"{placement.nodes[node_id]}:{self.config.cluster.raft_port + group}"

    def _node_of_address(self, placement: Placement) -> dict[str, int]:
        return {
            self._raft_address(placement, n, g): n
            for n in placement.nodes
            for g in placement.groups
        }

    async def _open_groups(
        self, placement: Placement, driver: RaftDriver, router: Router, stores: list[Store]
    ) -> None:
        cfg = self.config
        me = cfg.node.id
        by_address = self._node_of_address(placement)
        password = cfg.cluster.password or None
        for gid in placement.groups_of_node(me):
            gdir = Path(cfg.node.data_dir) / "groups" / f"g{gid}"
            store = Store(gdir / "db")
            stores.append(store)
            machine = GroupMachine(gid, store)
            snapshots = CheckpointSnapshots(machine, gdir / "snapshots")
            address = self._raft_address(placement, me, gid)
            conf = make_conf(
                password=password,
                bind_address=address,
                journal_file=str(gdir / "raft.journal"),
                dump_file=str(gdir / "raft.dump"),
                snapshots=snapshots,
                timing=self.timing,
            )
            partners = [
                self._raft_address(placement, n, gid) for n in placement.replicas(gid) if n != me
            ]

            def build(
                address: str = address,
                partners: list[str] = partners,
                conf: SyncObjConf = conf,
                machine: GroupMachine = machine,
                snapshots: CheckpointSnapshots = snapshots,
            ) -> ReplicatedGroup:
                return ReplicatedGroup(address, partners, conf, machine, snapshots)

            future = driver.add_group(f"g{gid}", build)
            raft = await trio.to_thread.run_sync(future.result)
            local = LocalGroup(gid, store, machine, raft, by_address.get)
            pipeline = GroupPipeline(
                local,
                router.on_committed,
                commit_window_s=cfg.messages.commit_window_ms / 1000,
                max_batch=cfg.messages.max_batch,
                proposal_timeout_s=cfg.cluster.proposal_timeout_s,
            )
            router.attach(local, pipeline)

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        host = cfg.node.host
        placement = initial_placement(cfg.cluster_nodes(), cfg.cluster.groups, cfg.cluster.replicas)
        token = peer_token(cfg.cluster.password) if cfg.cluster.password else None
        clients = GrpcClients(peer_pb2_grpc.PeerStub, token)
        router = Router(
            RouterSettings(
                node_id=cfg.node.id,
                grpc_port=cfg.cluster.grpc_port,
                forward_timeout_s=cfg.cluster.forward_timeout_s,
                proposal_timeout_s=cfg.cluster.proposal_timeout_s,
            ),
            placement,
            clients,
            self.deliver_local,
            self.kick_local,
            self.online_local,
        )
        driver = RaftDriver(self.timing.tick_interval_s, name=f"node{cfg.node.id}")
        driver.start()
        stores: list[Store] = []
        try:
            await self._open_groups(placement, driver, router, stores)
            grpc_server = GrpcServer(
                bind=f"{host}:{cfg.cluster.grpc_port}",
                auth_token=token,
                add_to_server=peer_pb2_grpc.add_PeerServicer_to_server,
                servicer_base=peer_pb2_grpc.PeerServicer,
                handlers=router.handlers(),
            )
            async with trio.open_nursery() as nursery, grpc_server.serving():
                await nursery.start(router.run)
                await self._serve_clients(nursery, router)
                while not router.groups_ready():
                    await trio.sleep(READY_POLL_S)  # waiting on elections, which signal nothing
                log.info("node ready", **self.endpoints)
                # One machine-readable line on stdout: supervisors (dev, tests, chaos) wait for it.
                print("RAFTCHAT_READY " + json.dumps(self.endpoints), flush=True)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(driver.stop)
            clients.close_all()
            for store in stores:
                store.close()

    async def _serve_clients(self, nursery: trio.Nursery, router: Router) -> None:
        cfg = self.config
        host = cfg.node.host
        gw = GatewayContext(cfg, self.registry, router, nursery)

        async def on_tcp(stream: trio.SocketStream) -> None:
            await Session(gw, TcpTransport(stream)).run()

        async def on_ws(request: WebSocketRequest) -> None:
            ws = await request.accept()
            await Session(gw, WsTransport(ws)).run()

        api = ApiContext(cfg, self.registry, router)
        http = HttpServer(build_router(api), cfg.http.max_body_bytes)
        await nursery.start(partial(http.serve, host, cfg.http.port))
        tcp_port = cfg.gateway.tcp_port
        await nursery.start(partial(trio.serve_tcp, on_tcp, tcp_port, host=host))
        await nursery.start(
            lambda task_status: serve_websocket(
                on_ws,
                host,
                cfg.gateway.ws_port,
                None,
                max_message_size=MAX_REMAINING_LENGTH + 16,
                connect_timeout=cfg.gateway.auth_timeout_s,
                disconnect_timeout=2,
                task_status=task_status,
            )
        )
        self.endpoints = {
            "node_id": str(cfg.node.id),
            "http": f"http://{host}:{cfg.http.port}",
            "tcp": f"{host}:{tcp_port}",
            "ws": f"ws://{host}:{cfg.gateway.ws_port}",
            "grpc": f"{host}:{cfg.cluster.grpc_port}",
        }


async def _serve_until_signal(config: Config) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(Node(config).run)
            async for signum in signals:
                log.info("stopping on signal", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def run_node(config: Config) -> None:
    trio.run(_serve_until_signal, config)
    print("raftchat: node stopped", file=sys.stderr)
