"""Monitoring routes: ``/healthz``, ``/readyz``, ``/metrics``, and WuKongIM's (NATS-style)
``/varz`` and ``/connz`` (``docs/api.md``, "Monitoring").

``/healthz``, ``/readyz`` and ``/metrics`` need no credential (``auth.EXEMPT_ROUTES``): load
balancers and Prometheus call them, and they name no user. ``/varz`` and ``/connz`` list uids
and client addresses: they are product routes, behind the API token like the rest.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from proto.wkproto import DeviceFlag, DeviceLevel

from ..client_routes import own_endpoints
from ..config import Config
from ..metrics import CONTENT_TYPE, Connection, NodeMetrics
from ..readiness import not_ready
from .common import ApiContext, RouteTable
from .server import ApiError, Request, Response, bad_request

DEFAULT_LIMIT = 20
"""WuKongIM's default page of ``/connz`` (and of ``/varz?show=conn``)."""
MAX_LIMIT = 10_000

_SORT_KEYS: dict[str, Any] = {
    "id": lambda c: c.conn_id,
    "inMsg": lambda c: c.traffic.in_msgs,
    "outMsg": lambda c: c.traffic.out_msgs,
    "inMsgBytes": lambda c: c.traffic.in_msg_bytes,
    "outBytes": lambda c: c.traffic.out_msg_bytes,
    "pendingBytes": lambda c: c.pending_bytes(),
    "uptime": lambda c: c.connected_at,
    "inPacket": lambda c: c.traffic.in_packets,
    "outPacket": lambda c: c.traffic.out_packets,
    "inPacketBytes": lambda c: c.traffic.in_packet_bytes,
    "outPacketBytes": lambda c: c.traffic.out_packet_bytes,
}
"""WuKongIM's ``sort`` values; each also with a ``Desc`` suffix. As there, ``uptime`` sorts by
the time of the login (oldest first)."""

try:
    VERSION = metadata.version("raftchat")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0.0.0"


def uptime(seconds: float) -> str:
    """A duration as NATS and WuKongIM print it: ``1d2h3m4s``, leading zero units left out."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours}h{minutes}m{s}s"
    if hours:
        return f"{hours}h{minutes}m{s}s"
    if minutes:
        return f"{minutes}m{s}s"
    return f"{s}s"


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _device(conn: Connection) -> str:
    try:
        name = {DeviceFlag.APP: "App", DeviceFlag.WEB: "Web", DeviceFlag.PC: "PC"}[
            DeviceFlag(conn.device_flag)
        ]
    except (ValueError, KeyError):
        name = "Unknown"
    level = "master" if conn.device_level == DeviceLevel.MASTER else "slave"
    return f"{name}({level})"


def conn_info(conn: Connection, now: float) -> dict[str, Any]:
    """One connection with WuKongIM's ``ConnInfo`` fields, plus ``device_flag``,
    ``device_level`` and ``transport``."""
    host, _, port = conn.peer.rpartition(":")
    t = conn.traffic
    return {
        "id": conn.conn_id,
        "uid": conn.uid,
        "ip": host.strip("[]"),
        "port": int(port) if port.isdigit() else 0,
        "last_activity": _rfc3339(conn.last_active),
        "uptime": uptime(now - conn.connected_at),
        "idle": uptime(now - conn.last_active),
        "pending_bytes": conn.pending_bytes(),
        "in_msgs": t.in_msgs,
        "out_msgs": t.out_msgs,
        "in_msg_bytes": t.in_msg_bytes,
        "out_msg_bytes": t.out_msg_bytes,
        "in_packets": t.in_packets,
        "out_packets": t.out_packets,
        "in_packet_bytes": t.in_packet_bytes,
        "out_packet_bytes": t.out_packet_bytes,
        "device": _device(conn),
        "device_id": conn.device_id,
        "device_flag": conn.device_flag,
        "device_level": conn.device_level,
        "version": conn.version,
        "transport": conn.transport_kind,
    }


def _int_query(req: Request, name: str, default: int, maximum: int) -> int:
    raw = req.query.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None
    if value < 0 or value > maximum:
        raise bad_request(f"{name} must be between 0 and {maximum}")
    return value


def _sort_key(sort: str) -> tuple[Any, bool]:
    name, desc = (sort[: -len("Desc")], True) if sort.endswith("Desc") else (sort, False)
    key = _SORT_KEYS.get(name or "id")
    if key is None:
        choices = ", ".join(sorted(_SORT_KEYS))
        raise bad_request(f"sort must be one of {choices}, each optionally with Desc")
    return key, desc


def logged_in(metrics: NodeMetrics) -> list[Connection]:
    """Live connections that have logged in (WuKongIM lists only authenticated ones)."""
    return [c for c in list(metrics.connections.values()) if c.uid]


def _metrics(ctx: ApiContext) -> NodeMetrics:
    if ctx.metrics is None:
        raise ApiError(404, "this node keeps no metrics")
    return ctx.metrics


def _other_node(ctx: ApiContext, req: Request) -> None:
    node_id = ctx.config.node.id
    raw = req.query.get("node_id", "")
    if raw not in ("", "0", str(node_id)):
        raise bad_request(
            f"this is node {node_id}: ask node {raw} at its own HTTP address "
            "(every node answers for itself)"
        )


async def healthz(ctx: ApiContext, req: Request) -> Response:
    return Response(200, {"status": "ok"})


async def readyz(ctx: ApiContext, req: Request) -> Response:
    reasons = not_ready(ctx.router.local)
    if ctx.client_routes is not None and ctx.client_routes.draining:
        reasons.insert(0, "this node is draining (leaving service)")
    if reasons:
        return Response(503, {"status": "not ready", "reasons": reasons})
    return Response(200, {"status": "ready"})


async def prometheus(ctx: ApiContext, req: Request) -> Response:
    return Response(200, _metrics(ctx).render(), content_type=CONTENT_TYPE)


async def varz(ctx: ApiContext, req: Request) -> Response:
    _other_node(ctx, req)
    m = _metrics(ctx)
    now = time.time()
    conns = logged_in(m)
    times = os.times()
    up = max(now - m.started_at, 1e-3)
    traffic = m.traffic()
    ends = own_endpoints(ctx.config)
    scheme = "https" if ctx.config.http.tls else "http"
    body: dict[str, Any] = {
        "server_id": str(ctx.config.node.id),
        "server_name": "raftchat",
        "version": VERSION,
        "connections": len(conns),
        "user_handler_count": len({c.uid for c in conns}),
        "uptime": uptime(now - m.started_at),
        # Threads: the nearest thing to WuKongIM's goroutine count.
        "goroutine": threading.active_count(),
        "mem": _rss_bytes(),
        # Average over the process' life, as NATS and WuKongIM report it (ps' %cpu).
        "cpu": round((times.user + times.system) / up * 100, 2),
        "in_msgs": traffic.in_msgs,
        "out_msgs": traffic.out_msgs,
        "in_bytes": traffic.in_packet_bytes,
        "out_bytes": traffic.out_packet_bytes,
        "slow_clients": m.slow_clients,
        "retry_queue": 0,
        "tcp_addr": ends.tcp_addr,
        "ws_addr": ends.ws_addr,
        "wss_addr": ends.wss_addr,
        "manager_addr": console_url(ctx.config),
        "api_url": f"{scheme}://{ctx.config.node.host}:{ctx.config.http.port}",
        "commit": "",
        "conversation_cache_count": 0,
    }
    body["slow_consumers"] = body["slow_clients"]  # the older WuKongIM name
    if req.query.get("show") == "conn":
        limit = _int_query(req, "conn_limit", DEFAULT_LIMIT, MAX_LIMIT)
        conns.sort(key=lambda c: c.conn_id)
        body["conns"] = [conn_info(c, now) for c in conns[:limit]]
    return Response(200, body)


async def connz(ctx: ApiContext, req: Request) -> Response:
    _other_node(ctx, req)
    m = _metrics(ctx)
    key, desc = _sort_key(req.query.get("sort", ""))
    offset = _int_query(req, "offset", 0, 1 << 31)
    limit = _int_query(req, "limit", 0, MAX_LIMIT) or DEFAULT_LIMIT
    uid = req.query.get("uid", "").strip()
    conns = [c for c in logged_in(m) if not uid or c.uid == uid]
    conns.sort(key=key, reverse=desc)
    now = time.time()
    return Response(
        200,
        {
            "now": _rfc3339(now),
            "total": len(conns),
            "offset": offset,
            "limit": limit,
            "connections": [conn_info(c, now) for c in conns[offset : offset + limit]],
        },
    )


ROUTES: RouteTable = (
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/metrics", prometheus),
    ("GET", "/varz", varz),
    ("GET", "/connz", connz),
)


def console_url(cfg: Config) -> str:
    """The web console's URL (WuKongIM's manager address), or "" when the node serves none
    (``docs/console.md``: it needs ``auth.admin_token``)."""
    if not (cfg.console.enabled and cfg.auth.admin_token):
        return ""
    host = cfg.node.host
    address = f"[{host}]" if ":" in host else host
    return f"{'https' if cfg.http.tls else 'http'}://{address}:{cfg.console.port}/"


def _rss_bytes() -> int:
    """Resident memory, from /proc (Linux); 0 where there is none."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
