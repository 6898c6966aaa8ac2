"""A small JSON-RPC 2.0 client over a real WebSocket (trio-websocket), for the gateway tests.

It sends text messages, as the JS and Python EasySDKs do (``binary=True`` sends a binary
message, as the iOS EasySDK does), and keeps what the server sends apart: responses by id,
notifications in arrival order, and the close code once the server has closed.
"""

from __future__ import annotations

import base64
import itertools
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket

_ids = itertools.count(1)


class JsonRpcClient:
    def __init__(self, ws: trio_websocket.WebSocketConnection, uid: str = "") -> None:
        self.ws = ws
        self.uid = uid
        """The uid logged in by ``open_jsonrpc`` (empty when the test connects itself)."""
        self.responses: dict[Any, dict[str, Any]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.received: list[str | bytes] = []
        """Every message as it arrived (text or bytes)."""
        self.close_code: int | None = None
        self._changed = trio.Condition()
        self._closed = trio.Event()

    async def run_reader(self) -> None:
        try:
            while True:
                raw = await self.ws.get_message()
                self.received.append(raw)
                msg = json.loads(raw)
                async with self._changed:
                    if "method" in msg:
                        self.notifications.append(msg)
                    else:
                        self.responses[msg.get("id")] = msg
                    self._changed.notify_all()
        except trio_websocket.ConnectionClosed as e:
            self.close_code = e.reason.code
        finally:
            self._closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send_message(data)

    async def request(
        self,
        method: str,
        params: Any = None,
        *,
        request_id: Any = None,
        binary: bool = False,
        timeout_s: float = 10.0,
    ) -> dict[str, Any]:
        """Send a request and return the whole response (``result`` or ``error``)."""
        rid = f"r{next(_ids)}" if request_id is None else request_id
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            body["params"] = params
        text = json.dumps(body)
        await self.send_raw(text.encode() if binary else text)
        return await self.response(rid, timeout_s)

    async def response(self, rid: Any, timeout_s: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(timeout_s):
            async with self._changed:
                while rid not in self.responses:
                    assert not self._closed.is_set(), f"closed ({self.close_code}) before {rid}"
                    await self._changed.wait()
                return self.responses.pop(rid)

    async def notify(self, method: str, params: Any = None) -> None:
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            body["params"] = params
        await self.send_raw(json.dumps(body))

    async def notification(self, method: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The params of the next notification of ``method`` (earlier ones of it are taken)."""
        with trio.fail_after(timeout_s):
            async with self._changed:
                while True:
                    for i, msg in enumerate(self.notifications):
                        if msg["method"] == method:
                            del self.notifications[i]
                            params: dict[str, Any] = msg["params"]
                            return params
                    assert not self._closed.is_set(), f"closed ({self.close_code})"
                    await self._changed.wait()

    async def recv(self, timeout_s: float = 10.0) -> dict[str, Any]:
        return await self.notification("recv", timeout_s)

    async def send(
        self, channel_id: str, channel_type: int, payload: Any, **params: Any
    ) -> dict[str, Any]:
        """``send``; returns the result (the test fails on an error response)."""
        params.update(channelId=channel_id, channelType=channel_type, payload=payload)
        params.setdefault("clientMsgNo", f"jm-{time.monotonic_ns()}")
        answer = await self.request("send", params)
        assert "result" in answer, answer
        result: dict[str, Any] = answer["result"]
        return result

    async def wait_closed(self, timeout_s: float = 5.0) -> int | None:
        """The close code once the server has closed the connection."""
        with trio.fail_after(timeout_s):
            await self._closed.wait()
        return self.close_code

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@asynccontextmanager
async def open_jsonrpc(
    host: str,
    port: int,
    *,
    uid: str | None = None,
    token: str = "",
    device_flag: int = 1,
    device_id: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[JsonRpcClient]:
    """A WebSocket to the gateway (``wss://`` with ``ssl_context``); with ``uid``, logged in
    with ``connect`` (which must succeed) before the block runs."""
    async with trio.open_nursery() as nursery:
        ws = await trio_websocket.connect_websocket(
            nursery, host, port, "/", use_ssl=ssl_context or False, max_message_size=4 << 20
        )
        client = JsonRpcClient(ws, uid or "")
        nursery.start_soon(client.run_reader)
        try:
            if uid is not None:
                answer = await client.request(
                    "connect",
                    {
                        "uid": uid,
                        "token": token,
                        "deviceFlag": device_flag,
                        "deviceId": device_id or f"{uid}-dev",
                        "clientTimestamp": int(time.time() * 1000),
                    },
                )
                assert answer.get("result", {}).get("reasonCode") == 1, answer
            yield client
        finally:
            with trio.move_on_after(2):
                await ws.aclose()
            nursery.cancel_scope.cancel()
