"""The HTTP API's requests, answers and routing: JSON in, JSON out, WuKongIM's error envelope.

The connections themselves (h11 on trio, deadlines, caps) are ``listener.py``; the public gRPC
API dispatches into the same ``Router`` (ADR 008). A body is parsed with a nesting limit, so
hostile JSON is a 400 with a message, never a 500 (``docs/security.md``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cluster.ratelog import RateLimitedLog

from ..config_sections import HttpSection
from ..log import get_logger
from ..safejson import JsonRefused
from ..safejson import loads as safe_loads
from .auth import Credentials, presented_tokens

log = get_logger("http")

DEFAULT_MAX_JSON_DEPTH = HttpSection.max_json_depth
LOG_INTERVAL_S = 10.0
LOGGER = "raftchat.http"
"""At most one log line per client address and kind of trouble in this time."""


class ApiError(Exception):
    """Answered as ``{"msg": ..., "status": N}`` with HTTP status N (WuKongIM's envelope)."""

    def __init__(self, status: int, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.extra = extra


def bad_request(msg: str) -> ApiError:
    return ApiError(400, msg)


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in parsed JSON holds a surrogate of no pair: such a string
    has no UTF-8 form, so every id check, hash and store of it would raise. JSON lets an
    escape carry one (``"\\ud800"``); a paired escape is one ordinary character after
    parsing."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    max_json_depth: int = field(default=DEFAULT_MAX_JSON_DEPTH, repr=False)
    client: str = ""
    """The client's address, for log lines."""

    def json(self) -> Any:
        if not self.body.strip():
            raise bad_request("request body is empty; expected JSON")
        try:
            data = safe_loads(self.body, self.max_json_depth)
        except JsonRefused as e:
            raise bad_request(f"request body: {e}") from None
        # Only an escape (\ud800) or non-ASCII bytes (an encoded surrogate, another encoding)
        # can bring a surrogate: a body of plain ASCII without escapes skips the walk.
        if (b"\\u" in self.body or not self.body.isascii()) and _has_lone_surrogate(data):
            raise bad_request(
                "request body: a string in the JSON is not valid Unicode (a lone surrogate)"
            )
        return data

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise bad_request("request body must be a JSON object")
        return data


@dataclass
class Response:
    status: int = 200
    body: Any = field(default_factory=lambda: {"status": 200})
    headers: list[tuple[str, str]] = field(default_factory=list)
    """Headers beyond content-type and content-length."""
    content_type: str = "application/json; charset=utf-8"
    """Anything but JSON (``/metrics``' text) comes as ``bytes`` in ``body``."""

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    def __init__(self, credentials: Credentials | None = None) -> None:
        self.credentials = credentials
        """Who may call which route (``auth.py``); None: anyone (unit tests)."""
        self._routes: dict[tuple[str, str], Handler] = {}
        # A handler bug is not bad input, but a client can repeat the request that hits it:
        # one traceback per route and interval is enough to find it.
        self._bugs = RateLimitedLog(logging.getLogger(LOGGER), LOG_INTERVAL_S)

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._routes[(method.upper(), path)] = handler

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.add(method, path, fn)
            return fn

        return deco

    def paths(self) -> list[tuple[str, str]]:
        return sorted(self._routes)

    async def dispatch(self, req: Request) -> Response:
        """Answer a request from the network: its credential first (before the route is
        looked up, so that a client without one learns nothing, not even which routes
        exist), then the route."""
        if self.credentials is not None:
            tokens = presented_tokens(req.headers)
            refusal = self.credentials.refusal(req.method, req.path, req.query, tokens, req.client)
            if refusal is not None:
                body = {"msg": refusal.msg, "status": refusal.status}
                challenge = [("www-authenticate", 'Bearer realm="raftchat"')]
                return Response(refusal.status, body, challenge if refusal.status == 401 else [])
        return await self.handle(req)

    async def handle(self, req: Request) -> Response:
        """Answer a request whose caller is already authorized (the gRPC API checks the
        same rules on its own metadata before it calls here)."""
        handler = self._routes.get((req.method, req.path))
        if handler is None:
            if any(p == req.path for _, p in self._routes):
                return Response(405, {"msg": f"method {req.method} not allowed", "status": 405})
            return Response(404, {"msg": f"no route {req.path}", "status": 404})
        try:
            return await handler(req)
        except ApiError as e:
            return Response(e.status, {"msg": e.msg, "status": e.status, **e.extra})
        except Exception:
            self._bugs.exception((req.method, req.path), "handler failed", path=req.path)
            return Response(500, {"msg": "internal error", "status": 500})
