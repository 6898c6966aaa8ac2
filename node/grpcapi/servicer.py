"""The ``raftchat.v1`` services: each unary RPC runs the HTTP API's handler for its route
(``rpcs.py``), so that validation, forwarding to the slot group's leader and reason codes have
one implementation; ``Subscribe`` is ``subscribe.py``. ADR 008 says why."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from cluster.bridge import Authorize, GrpcAbort, GrpcService, Handler, Metadata, StreamHandler
from proto.raftchat.v1 import api_pb2, api_pb2_grpc

from ..http.auth import presented_tokens
from ..http.common import ApiContext
from ..http.server import ApiError, Request
from ..http.server import Router as HttpRouter
from . import errors
from .convert import from_json, to_json
from .rpcs import RPCS, Rpc
from .subscribe import LiveFeed, run_subscribe


def as_grpc(e: ApiError) -> GrpcAbort:
    return errors.api_error(e.status, {"msg": e.msg, **e.extra})


class PublicApi:
    """Serves the public API on its own gRPC server (``grpc.port``). Calls answer UNAVAILABLE
    until ``attach`` hands over the HTTP router, whose credentials (``http/auth.py``) decide
    who may call what: the API token as ``authorization: Bearer`` metadata, the admin token
    for the ``Cluster`` service."""

    def __init__(self, feed: LiveFeed) -> None:
        self.feed = feed
        self._http: HttpRouter | None = None
        self._ctx: ApiContext | None = None

    def attach(self, http: HttpRouter, ctx: ApiContext) -> None:
        self._http, self._ctx = http, ctx

    def services(self) -> list[GrpcService]:
        out = []
        for name, rpcs in RPCS.items():
            methods = api_pb2.DESCRIPTOR.services_by_name[name].methods_by_name
            handlers: dict[str, Handler] = {
                rpc_name: self._unary(rpc, getattr(api_pb2, methods[rpc_name].output_type.name))
                for rpc_name, rpc in rpcs.items()
            }
            streams: dict[str, StreamHandler] = (
                {"Subscribe": self._subscribe} if name == "Messages" else {}
            )
            out.append(
                GrpcService(
                    add_to_server=getattr(api_pb2_grpc, f"add_{name}Servicer_to_server"),
                    servicer_base=getattr(api_pb2_grpc, f"{name}Servicer"),
                    handlers=handlers,
                    streams=streams,
                    authorize=self._authorizer(name),
                )
            )
        return out

    def _authorizer(self, service: str) -> Authorize:
        """The HTTP API's rules for the route each RPC runs (``Subscribe``, which has none,
        counts as a product route)."""

        def authorize(method: str, metadata: Metadata, peer: str) -> GrpcAbort | None:
            http = self._http
            if http is None or http.credentials is None:  # starting: fail closed
                return GrpcAbort(grpc.StatusCode.UNAVAILABLE, "the node is starting")
            rpc = RPCS[service].get(method)
            verb, path = (rpc.method, rpc.path) if rpc else ("POST", f"/{service}/{method}")
            headers = {}
            for key, value in metadata:
                if key == "authorization" and isinstance(value, str):
                    headers["authorization"] = value
            tokens = presented_tokens(headers)
            refusal = http.credentials.refusal(verb, path, {}, tokens, peer)
            return None if refusal is None else errors.error(refusal.status, refusal.msg)

        return authorize

    async def call_route(self, method: str, path: str, data: Any) -> Any:
        """The HTTP API's answer to one request; raises ApiError for an error answer."""
        if self._http is None:
            raise ApiError(503, "node is starting, retry")
        if method == "GET":
            query = {k: str(v) for k, v in data.items()}
            request = Request(method, path, query, {}, b"")
        else:
            request = Request(method, path, {}, {}, json.dumps(data).encode())
        response = await self._http.handle(request)  # authorized by the service's check
        if response.status != 200:
            body = response.body if isinstance(response.body, dict) else {}
            extra = {k: v for k, v in body.items() if k not in ("msg", "status")}
            raise ApiError(response.status, str(body.get("msg", "")), **extra)
        return response.body

    def _unary(self, rpc: Rpc, reply_type: type[Message]) -> Callable[[Any], Awaitable[Any]]:
        async def handle(request: Message) -> Message:
            try:
                data = to_json(request)
                body = rpc.body(data) if rpc.body else data
                answer = await self.call_route(rpc.method, rpc.path, body)
                reply = rpc.answer(answer) if rpc.answer else answer
            except ApiError as e:
                raise as_grpc(e) from None
            return from_json(reply if isinstance(reply, dict) else {}, reply_type())

        return handle

    async def _subscribe(
        self, request: api_pb2.SubscribeRequest, emit: Callable[[Any], Awaitable[None]]
    ) -> None:
        try:
            if self._ctx is None:
                raise ApiError(503, "node is starting, retry")
            await run_subscribe(self._ctx, self.feed, self.call_route, request, emit)
        except ApiError as e:
            raise as_grpc(e) from None
