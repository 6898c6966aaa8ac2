"""The console's routes: its static pages, log-in and log-out, and ``/api/<route>``, which
answers with the node's own HTTP API route of that name (``docs/console.md``).

The console holds no cluster logic of its own. ``/api/cluster/status`` is the API's
``/cluster/status`` run in this process (``Router.handle``, past the API's credential check:
the console checked its own); with ``node=N`` it is asked of member N over the network, with
this node's own tokens, because some routes answer for their own node only (``/connz``,
``/metrics``). Only the routes in ``FORWARDED`` are reachable, so a console session can read
the cluster, look up channels and users, kick a user's devices and drain, remove or explain
the joining of nodes, and nothing else of the product API.

Every request but the static files and ``GET /`` needs the session cookie, which only
``POST /login`` with the admin token hands out (``HttpOnly``, ``SameSite=Strict``, and
``Secure`` over HTTPS). Every POST needs the header ``x-raftchat-console: 1``, which a page of
another origin cannot send without a CORS preflight that the console never grants, and a
matching ``Origin`` when the browser sends one: no cross-site request can act. Answers carry a
Content-Security-Policy that allows the console's own script and styles only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import trio

from cluster.ratelog import RateLimitedLog

from ..cluster_health import group_rows, probe_all
from ..http.auth import Credentials
from ..http.server import ApiError, Request, Response, Router, bad_request
from ..log import get_logger
from .forward import TIMEOUT_S, Forwarder
from .sessions import SessionStore

log = get_logger("console")

COOKIE = "raftchat_console"
CSRF_HEADER = "x-raftchat-console"
LOG_INTERVAL_S = 10.0

FORWARDED: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/cluster/status"),
        ("GET", "/connz"),
        ("GET", "/varz"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("GET", "/channel/info"),
        ("GET", "/channel/subscribers"),
        ("GET", "/channel/max_message_seq"),
        ("POST", "/channel/messagesync"),
        ("POST", "/user/onlinestatus"),
        ("POST", "/user/device_quit"),
        ("POST", "/cluster/drain"),
        ("POST", "/cluster/leave"),
        ("POST", "/cluster/join"),
    }
)
"""The API routes a console session may call, as ``/api<path>``."""

GROUP_COLUMNS = ["group", "replicas", "leader", "term", "commit", "applied", "commit ms", "lag"]
"""The columns of ``cluster_health.group_rows`` (``raftchat cluster status``'s table)."""

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}

SECURITY_HEADERS = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
]


@dataclass
class ConsoleContext:
    node_id: int
    api: Router
    """The node's HTTP API (its routes are called past its credential check)."""
    credentials: Credentials
    members: Callable[[], dict[int, str]]
    """The cluster's members now: node id -> address."""
    forwarder: Forwarder
    admin_token: str
    https: bool
    sessions: SessionStore = dataclasses.field(default_factory=SessionStore)


def cookie_value(header: str, name: str) -> str:
    """The value of cookie ``name`` in a ``Cookie`` header ("" when absent). Hand-parsed:
    the standard library's parser raises on inputs a browser may well send."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return ""


class ConsoleRouter(Router):
    """Answers the console's routes after its own checks (a session, the CSRF header), and
    puts the security headers on every answer."""

    def __init__(self, ctx: ConsoleContext) -> None:
        super().__init__(None)
        self.ctx = ctx
        self._log = RateLimitedLog(logging.getLogger("raftchat.console"), LOG_INTERVAL_S)

    async def dispatch(self, req: Request) -> Response:
        refusal = self.refusal(req)
        resp = refusal if refusal is not None else await self.handle(req)
        resp.headers.extend(SECURITY_HEADERS)
        return resp

    def session_id(self, req: Request) -> str:
        return cookie_value(req.headers.get("cookie", ""), COOKIE)

    def refusal(self, req: Request) -> Response | None:
        if req.method not in ("GET", "HEAD"):
            if req.headers.get(CSRF_HEADER) != "1":
                return _error(403, f"console requests that change anything need `{CSRF_HEADER}: 1`")
            origin = req.headers.get("origin")
            if origin is not None and _origin_host(origin) != req.headers.get("host", ""):
                self._log.warning(
                    (req.client, "origin"),
                    "console request from another origin refused",
                    client=req.client,
                    origin=origin[:100],
                )
                return _error(403, "this request comes from a page of another origin")
        if req.path.startswith("/api/") and not self.ctx.sessions.touch(self.session_id(req)):
            return _error(401, "log in to the console with the admin token")
        return None


def _origin_host(origin: str) -> str | None:
    """The host and port an ``Origin`` header names; None for one that names none (``null``,
    sent by sandboxed and local pages) or is no URL."""
    try:
        return urlsplit(origin).netloc or None
    except ValueError:  # say, an unclosed IPv6 bracket
        return None


def _error(status: int, msg: str) -> Response:
    return Response(status, {"msg": msg, "status": status})


def _static(name: str) -> bytes:
    return resources.files("node.console").joinpath("static", name).read_bytes()


def build_console_router(ctx: ConsoleContext) -> ConsoleRouter:
    r = ConsoleRouter(ctx)

    for path, (name, content_type) in _STATIC.items():
        body = _static(name)

        async def static(req: Request, body: bytes = body, ct: str = content_type) -> Response:
            return Response(200, body, content_type=ct)

        r.add("GET", path, static)

    @r.route("POST", "/login")
    async def login(req: Request) -> Response:
        body = req.json_object()
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise bad_request("token: the admin token (auth.admin_token) is required")
        if not ctx.credentials.is_admin(token.strip()):
            r._log.warning(
                (req.client, "login"),
                "console log-in refused: wrong admin token",
                client=req.client,
            )
            raise ApiError(401, "wrong admin token")
        sid = ctx.sessions.create()
        log.info("console log-in", client=req.client)
        cookie = f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict"
        if ctx.https:
            cookie += "; Secure"
        return Response(200, {"status": 200}, [("set-cookie", cookie)])

    @r.route("POST", "/logout")
    async def logout(req: Request) -> Response:
        ctx.sessions.drop(r.session_id(req))
        cookie = f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        return Response(200, {"status": 200}, [("set-cookie", cookie)])

    @r.route("GET", "/api/session")
    async def session(req: Request) -> Response:
        members = {str(n): h for n, h in sorted(ctx.members().items())}
        return Response(200, {"node_id": ctx.node_id, "nodes": members})

    @r.route("GET", "/api/overview")
    async def overview(req: Request) -> Response:
        """The cluster map with each member's health and each follower's lag: what
        ``raftchat cluster status`` prints, as JSON."""
        answer = await ctx.api.handle(Request("GET", "/cluster/status", {}, {}, b""))
        if answer.status != 200:
            return answer
        status: dict[str, Any] = answer.body
        urls = {int(n): ctx.forwarder.url_of(h) for n, h in status["nodes"].items()}
        health = await trio.to_thread.run_sync(
            probe_all, urls, ctx.admin_token or None, TIMEOUT_S, ctx.forwarder.http
        )
        nodes = []
        zones = status.get("zones") or {}
        for n, host in sorted((int(k), v) for k, v in status["nodes"].items()):
            h = health.get(n)
            own = (h.status or {}) if h is not None else {}
            leads = [g["group"] for g in own.get("groups") or [] if g.get("is_leader")]
            nodes.append(
                {
                    "node_id": n,
                    "address": host,
                    "zone": zones.get(str(n), ""),
                    "health": h.health if h else "?",
                    "detail": h.detail if h else "",
                    "leads": leads,
                    "draining": n in (status.get("draining") or []),
                }
            )
        body = {
            "node_id": ctx.node_id,
            "placement_version": status.get("placement_version"),
            "nodes": nodes,
            "group_columns": GROUP_COLUMNS,
            "groups": group_rows(status, health),
        }
        return Response(200, body)

    for method, path in sorted(FORWARDED):

        async def forwarded(req: Request, path: str = path) -> Response:
            return await _forward(ctx, r, req, path)

        r.add(method, "/api" + path, forwarded)
    return r


async def _forward(ctx: ConsoleContext, r: ConsoleRouter, req: Request, path: str) -> Response:
    query = dict(req.query)
    raw = query.pop("node", "")
    target = ctx.node_id
    if raw:
        try:
            target = int(raw)
        except ValueError:
            raise bad_request("node must be a node id") from None
    if req.method == "POST":
        log.info("console action", client=req.client, path=path, body=_summary(req.body))
    if target == ctx.node_id:
        return await ctx.api.handle(dataclasses.replace(req, path=path, query=query, headers={}))
    host = ctx.members().get(target)
    if host is None:
        raise ApiError(404, f"node {target} is not a member")
    return await ctx.forwarder.call(target, host, req.method, path, query, req.body)


def _summary(body: bytes) -> str:
    """A console action's body for the log, cut short (these routes take no secret)."""
    return body[:200].decode("utf-8", "replace")
