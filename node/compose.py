"""How a node's parts are built and connected. Each part gets what it uses through its
constructor; ``node/app.py`` runs the parts and owns their lifecycle.

Two pairs of parts need each other, and take a function for the other one where a constructor
cannot: webhooks ask the router's sessions who is online, and the router's fan-out feeds the
webhooks every committed batch (``masters_online`` below); the controller calls admin
operations, and admin operations reach the controller (``Admin``'s ``controller``).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import trio

from cluster.aio_thread import AsyncioThread
from cluster.bridge import GrpcServer
from cluster.grpc_client import GrpcClients
from cluster.listen import start_listener
from cluster.peer_stream import OutboundStream, StreamEnds
from cluster.peerauth import PeerKeys
from cluster.placement import Placement
from cluster.stream_calls import CallStream
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.raftchat.peer.v1 import peer_pb2_grpc

from .admin import Admin
from .client_routes import ClientRoutes
from .config import Config
from .config_sections import is_loopback
from .fanout import CommitHook
from .grpcapi.servicer import PublicApi
from .http.listener import HttpServer
from .http.routes_monitoring import console_url
from .http.server import Router as HttpRouter
from .identity import DataDir
from .log import get_logger
from .peer_calls import PeerStreams
from .presence import ClusterSessions
from .router import Router, RouterSettings
from .sessions import SessionRegistry
from .storage import MessageRecord
from .tls import NodeTls
from .userfacts import UserFacts
from .usertokens import TokenKeys
from .webhooks import MastersOnline, Webhooks

log = get_logger("node")


@dataclass(frozen=True)
class Secrets:
    """The keys a node derives from ``cluster.password`` (and the one being replaced)."""

    raft_passwords: str | tuple[str, ...]
    """What pysyncobj gets as its password (``cluster/raft/wire.py``: a pair while it changes)."""
    peer_keys: PeerKeys
    """The peer calls' keys: signed with the password, also accepted under the other one."""
    token_keys: TokenKeys
    """What user tokens are sealed and opened with (``node/usertokens.py``)."""


def secrets_of(config: Config, datadir: DataDir) -> Secrets:
    # Never a Raft port without a password: pysyncobj unpickles whatever reaches an open
    # one. A lone node has no peer to share a secret with: it keeps one of its own in its
    # data directory, which also keys its user tokens (they must outlive a restart).
    local = datadir.local_secret(create=not config.cluster.password)
    password = config.cluster.password or local or ""
    accepted = config.cluster.password_accepted
    return Secrets(
        raft_passwords=(password, accepted) if accepted else password,
        peer_keys=PeerKeys.of(password, [accepted] if accepted else []),
        # Tokens sealed under a password being replaced, or by this node while it was alone
        # without a password, still log in (and are sealed again under the current key).
        token_keys=TokenKeys([config.cluster.password, accepted, local or ""]),
    )


def warn_open_doors(config: Config, tls: NodeTls | None) -> None:
    """Log every setting that opens a door, once at start."""
    cfg = config
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
    if not is_loopback(cfg.node.host) and not (tls and tls.ca):
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
    for warning in tls.warnings if tls is not None else ():
        log.warning(warning)


def peer_clients(secrets: Secrets, tls: NodeTls | None) -> GrpcClients:
    # Mutual TLS between peers when tls.ca_file is set; plain otherwise.
    credentials = tls.peer_channel_credentials() if tls is not None else None
    return GrpcClients(peer_pb2_grpc.PeerStub, secrets.peer_keys, credentials)


def peer_streams(secrets: Secrets, tls: NodeTls | None, grpc_loop: AsyncioThread) -> PeerStreams:
    """The long-lived streams to other nodes, on the gRPC servers' asyncio loop (ADR 026)."""
    credentials = tls.peer_channel_credentials() if tls is not None else None
    keys = secrets.peer_keys
    return PeerStreams(
        StreamEnds(lambda to, path: OutboundStream(to, path, keys, grpc_loop, credentials)),
        StreamEnds(lambda to, path: CallStream(to, path, keys, grpc_loop, credentials)),
    )


class LocalSessions(Protocol):
    """This node's own sessions, as the router's peer service and fan-out reach them."""

    def deliver_local(
        self, msg: MessageRecord | pb.EventPush, uids: list[str], origin_conn: int | None
    ) -> None: ...
    def kick_local(self, req: pb.KickRequest) -> int: ...
    def online_local(self, uids: list[str]) -> list[tuple[str, int]]: ...
    def online_levels_local(self, uids: list[str]) -> list[tuple[str, int, int]]: ...


def build_router(
    config: Config,
    clients: GrpcClients,
    streams: PeerStreams,
    local: LocalSessions,
    commit_hooks: Sequence[CommitHook],
) -> Router:
    """The router, with an empty map until the controller group gives it the stored one."""
    c = config.cluster
    return Router(
        RouterSettings(
            node_id=config.node.id,
            grpc_port=c.grpc_port,
            forward_timeout_s=c.forward_timeout_s,
            proposal_timeout_s=c.proposal_timeout_s,
        ),
        Placement(0, [], {}, {}),
        clients,
        local.deliver_local,
        local.kick_local,
        local.online_local,
        online_levels_local=local.online_levels_local,
        commit_hooks=commit_hooks,
        streams=streams,
    )


def build_webhooks(
    config: Config, registry: SessionRegistry, masters_online: MastersOnline
) -> Webhooks | None:
    """The webhook sender if ``webhook.url`` is set; it also hears every session's coming
    and going."""
    if not config.webhook.url:
        return None
    webhooks = Webhooks(config.webhook, config.node.id, registry, masters_online)
    registry.listeners.append(webhooks.on_session)
    return webhooks


def cluster_sessions(registry: SessionRegistry, router: Router) -> ClusterSessions:
    return ClusterSessions(registry, registry.limits, router.call_each_other_node, router.call_node)


def peer_handlers(
    router: Router,
    admin: Admin,
    facts: UserFacts,
    sessions: ClusterSessions,
    client_routes: ClientRoutes,
) -> dict[str, Callable[[Any], Any]]:
    """Every request handler of the peer service (one-way notices: ``Router.notices``)."""
    return {
        **router.handlers(),
        "Admin": admin.rpc,
        "Invalidate": facts.rpc,
        "Sessions": sessions.rpc_sessions,
        "Endpoints": client_routes.rpc_endpoints,
    }


def grpc_servers(
    config: Config,
    tls: NodeTls | None,
    secrets: Secrets,
    router: Router,
    handlers: dict[str, Callable[[Any], Any]],
    public_api: PublicApi,
    grpc_loop: AsyncioThread,
) -> tuple[GrpcServer, GrpcServer]:
    """The peer service and the public gRPC API, on one asyncio loop (the streams' too)."""
    cfg = config
    host = cfg.node.host
    peer = GrpcServer(
        bind=f"{host}:{cfg.cluster.grpc_port}",
        peer_auth=secrets.peer_keys,
        add_to_server=peer_pb2_grpc.add_PeerServicer_to_server,
        servicer_base=peer_pb2_grpc.PeerServicer,
        handlers=handlers,
        notices=router.notices(),
        inbound=router.inbound(),
        calls="Calls",
        what="peer gRPC",
        credentials=tls.peer_server_credentials() if tls is not None else None,
        loop_thread=grpc_loop,
    )
    # The public API on a port of its own, so that the peer port can be closed to all
    # but the cluster's nodes (it checks the API token, not the peer token).
    public = GrpcServer.of_services(
        f"{host}:{cfg.grpc.port}",
        public_api.services(),
        what="public gRPC",
        # TLS for clients with a certificate; no client certificate asked for.
        credentials=tls.public_grpc_credentials() if tls is not None else None,
        # The HTTP API's body limit: the same requests, and no more for a stranger to
        # make the node buffer before its token is checked.
        max_message_bytes=cfg.http.max_body_bytes,
        loop_thread=grpc_loop,
    )
    return peer, public


def endpoints(config: Config, wss: bool, console: str) -> dict[str, str]:
    """What the node serves where: the RAFTCHAT_READY line's and the "node ready" log's."""
    cfg = config
    host = cfg.node.host
    found = {
        "node_id": str(cfg.node.id),
        "http": f"{'https' if cfg.http.tls else 'http'}://{host}:{cfg.http.port}",
        "tcp": f"{host}:{cfg.gateway.tcp_port}",
        "ws": f"ws://{host}:{cfg.gateway.ws_port}",
        "grpc": f"{host}:{cfg.grpc.port}",
        "peer": f"{host}:{cfg.cluster.grpc_port}",
    }
    if wss:
        found["wss"] = f"wss://{host}:{cfg.gateway.wss_port}"
    if console:
        found["console"] = console
    return found


async def serve_console(
    nursery: trio.Nursery,
    config: Config,
    api: HttpRouter,
    ssl_context: ssl.SSLContext | None,
    members: Callable[[], dict[int, str]],
) -> str:
    """Start the web console (``docs/console.md``) if it is to be served; its URL, or ""."""
    cfg = config
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
            members=members,
            forwarder=forwarder,
            admin_token=cfg.auth.admin_token,
            https=https,
        )
    )
    server = HttpServer(router, cfg.http, ssl_context if https else None)
    host, port = cfg.node.host, cfg.console.port
    await start_listener(nursery, "console", host, port, partial(server.serve, host, port))
    return console_url(cfg)
