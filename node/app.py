"""One raftchat node process: storage, send pipeline, gateway listeners and the HTTP API."""

from __future__ import annotations

import json
import signal
import sys
from functools import partial
from pathlib import Path

import trio
from trio_websocket import WebSocketRequest, serve_websocket

from proto.wkproto import MAX_REMAINING_LENGTH, ChannelType

from .channels import recipients
from .config import Config
from .gateway.session import GatewayContext, Session
from .gateway.transport import TcpTransport, WsTransport
from .http.api import ApiContext, build_router
from .http.server import HttpServer
from .ids import SnowflakeIds
from .log import get_logger
from .meta import MetaWriter
from .pipeline import SendPipeline
from .sessions import DeviceLimits, SessionRegistry
from .storage import MessageRecord, Store

log = get_logger("node")


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        limits = DeviceLimits(
            app=config.devices.app_limit, web=config.devices.web_limit, pc=config.devices.pc_limit
        )
        self.registry = SessionRegistry(limits)
        self.store: Store | None = None
        self.endpoints: dict[str, str] = {}

    def _deliver(self, msg: MessageRecord, origin_conn: int | None) -> None:
        """Fan a committed message out to this node's sessions of its recipients."""
        assert self.store is not None
        subscribers = (
            self.store.subscribers(msg.channel_type, msg.channel_id)
            if msg.channel_type != ChannelType.PERSON
            else []
        )
        for uid in recipients(msg.channel_id, msg.channel_type, subscribers):
            for session in self.registry.of(uid):
                if session.conn_id != origin_conn:
                    session.push(msg)

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        host = cfg.node.host
        self.store = store = Store(Path(cfg.node.data_dir) / "db")
        try:
            pipeline = SendPipeline(
                store,
                SnowflakeIds(cfg.node.id),
                self._deliver,
                commit_window_s=cfg.messages.commit_window_ms / 1000,
                max_batch=cfg.messages.max_batch,
            )
            async with trio.open_nursery() as nursery:
                gw = GatewayContext(cfg, store, self.registry, pipeline, nursery)

                async def on_tcp(stream: trio.SocketStream) -> None:
                    await Session(gw, TcpTransport(stream)).run()

                async def on_ws(request: WebSocketRequest) -> None:
                    ws = await request.accept()
                    await Session(gw, WsTransport(ws)).run()

                api = ApiContext(cfg, store, MetaWriter(store), self.registry, pipeline)
                http = HttpServer(build_router(api), cfg.http.max_body_bytes)
                nursery.start_soon(pipeline.run)
                await nursery.start(partial(http.serve, host, cfg.http.port))
                await nursery.start(
                    partial(trio.serve_tcp, on_tcp, cfg.gateway.tcp_port, host=host)
                )
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
                    "tcp": f"{host}:{cfg.gateway.tcp_port}",
                    "ws": f"ws://{host}:{cfg.gateway.ws_port}",
                }
                log.info("node ready", **self.endpoints)
                # One machine-readable line on stdout: process supervisors (dev, tests, chaos)
                # wait for it instead of polling.
                print("RAFTCHAT_READY " + json.dumps(self.endpoints), flush=True)
                task_status.started(self)
        finally:
            store.close()
            self.store = None


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
