"""The gateway's per-connection boundary and connection capacity (node/gateway/listeners.py),
on real socket pairs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from node.config import Config
from node.gateway.listeners import FD_RESERVE, Gateway, connection_capacity
from node.gateway.session import GatewayContext


def gateway(max_connections: int = 0) -> Gateway:
    cfg = Config()
    cfg.gateway.max_connections = max_connections
    ctx: Any = GatewayContext(cfg, None, None, None)  # type: ignore[arg-type]
    return Gateway(ctx)


async def pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


def test_capacity_comes_from_the_open_file_limit_unless_set_lower() -> None:
    assert connection_capacity(0, 20_000) == 20_000 - FD_RESERVE
    assert connection_capacity(500, 20_000) == 500
    assert connection_capacity(50_000, 20_000) == 20_000 - FD_RESERVE
    assert connection_capacity(0, 100) == 1


def test_a_failing_connection_is_logged_and_closed_and_the_next_one_is_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = gateway()
    served: list[str] = []

    async def handler(stream: trio.SocketStream) -> None:
        if not served:
            served.append("first")
            raise RuntimeError("a bug nobody foresaw")
        served.append("second")

    async def main() -> None:
        for _ in range(2):
            server, client = await pair()
            await gw._contained("tcp", handler, server)  # returns: nothing escapes
            assert await client.receive_some(1) == b""  # and the socket was closed
        assert gw.open == 0

    with caplog.at_level(logging.WARNING, "raftchat.gateway"):
        trio.run(main)
    assert served == ["first", "second"]
    assert [r.getMessage() for r in caplog.records] == ["connection failed unexpectedly; closed"]


def test_over_capacity_the_handler_never_runs() -> None:
    gw = gateway(max_connections=1)
    calls: list[int] = []

    async def main() -> None:
        async def hold(stream: trio.SocketStream) -> None:
            calls.append(1)
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            server, _client = await pair()
            nursery.start_soon(gw._contained, "tcp", hold, server)
            await trio.testing.wait_all_tasks_blocked()
            extra, extra_client = await pair()
            await gw._contained("ws", hold, extra)
            assert await extra_client.receive_some(1) == b""
            assert gw.refused == 1 and calls == [1]
            nursery.cancel_scope.cancel()
        assert gw.open == 0

    trio.run(main)
