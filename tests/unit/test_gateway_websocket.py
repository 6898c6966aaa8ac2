"""The gateway's WebSocket connection (node/gateway/websocket.py) against a wsproto client
over an in-memory stream: upgrade, messages, control frames in every state, limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from node.gateway.websocket import HandshakeFailed, WsConnection

MAX = 1024


def masked_ping(payload: bytes) -> bytes:
    """A client PING frame (masked with the zero key, which leaves the payload as it is)."""
    return bytes([0x89, 0x80 | len(payload), 0, 0, 0, 0]) + payload


def masked_close(code: int) -> bytes:
    return bytes([0x88, 0x82, 0, 0, 0, 0]) + code.to_bytes(2, "big")


class Client:
    """A wsproto client on the other end of an in-memory stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def events(self) -> list[Event]:
        """Everything the server sent until it closed the stream."""
        out: list[Event] = []
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return out
            if self.ws.state is not ConnectionState.CLOSED:
                self.ws.receive_data(data)
                out.extend(self.ws.events())

    async def upgrade(self) -> None:
        await self.send(Request(host="test", target="/"))
        while True:
            self.ws.receive_data(await self.stream.receive_some(65536))
            for event in self.ws.events():
                assert isinstance(event, AcceptConnection), event
                return


async def with_server(
    serve: Callable[[WsConnection], Awaitable[None]],
    talk: Callable[[Client], Awaitable[None]],
) -> None:
    server_stream, client_stream = trio.testing.memory_stream_pair()
    ws = WsConnection(server_stream, MAX)

    async def server() -> None:
        try:
            await serve(ws)
        finally:
            await ws.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await talk(Client(client_stream))


async def echo(ws: WsConnection) -> None:
    await ws.accept()
    while (message := await ws.receive()) is not None:
        await ws.send_message(message)


def run(
    serve: Callable[[WsConnection], Awaitable[None]], talk: Callable[[Client], Awaitable[None]]
) -> None:
    async def main() -> None:
        with trio.fail_after(5):
            await with_server(serve, talk)

    trio.run(main)


def test_messages_of_both_kinds_and_fragments_come_back_whole() -> None:
    async def talk(c: Client) -> None:
        await c.upgrade()
        await c.send(BytesMessage(data=b"one"))
        await c.send(TextMessage(data="two"))
        await c.send(BytesMessage(data=b"th", message_finished=False))
        await c.send(BytesMessage(data=b"ree"))
        await c.send(CloseConnection(code=1000))
        events = await c.events()
        got = [e.data for e in events if isinstance(e, BytesMessage | TextMessage)]
        assert got == [b"one", "two", b"three"]
        assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000

    run(echo, talk)


def test_a_ping_is_answered_while_open_and_never_after_the_server_closed() -> None:
    # The server closes at once on the first message (as a session does on a bad frame); the
    # client keeps pinging. Before, the PONG in the closing state raised LocalProtocolError.
    async def close_on_first(ws: WsConnection) -> None:
        await ws.accept()
        await ws.receive()
        await ws.aclose(1002, "bad frame")

    async def talk(c: Client) -> None:
        await c.upgrade()
        await c.send(Ping(payload=b"p1"))
        await c.send(BytesMessage(data=b"bad"))
        events: list[Event] = []
        while not any(isinstance(e, CloseConnection) for e in events):
            c.ws.receive_data(await c.stream.receive_some(65536))
            events.extend(c.ws.events())
        # The server now waits for our CLOSE. Pings written by hand: the client's own wsproto
        # refuses them once it has seen the server's CLOSE, but a hostile client need not.
        for _ in range(20):
            await c.send_raw(masked_ping(b"again"))
        await c.send_raw(masked_close(1000))
        events += await c.events()
        pongs = [e for e in events if isinstance(e, Pong)]
        assert [p.payload for p in pongs] == [b"p1"]
        closes = [e for e in events if isinstance(e, CloseConnection)]
        assert [e.code for e in closes] == [1002]

    run(close_on_first, talk)


def test_a_message_over_the_limit_gets_close_1009() -> None:
    async def talk(c: Client) -> None:
        await c.upgrade()
        await c.send(BytesMessage(data=b"x" * (MAX + 1)))
        events = await c.events()
        assert not any(isinstance(e, BytesMessage) for e in events)
        assert isinstance(events[-1], CloseConnection) and events[-1].code == 1009

    run(echo, talk)


def test_fragments_that_add_up_past_the_limit_get_close_1009() -> None:
    async def talk(c: Client) -> None:
        await c.upgrade()
        for _ in range(3):
            await c.send(BytesMessage(data=b"x" * (MAX // 2), message_finished=False))
        events = await c.events()
        assert isinstance(events[-1], CloseConnection) and events[-1].code == 1009

    run(echo, talk)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bytes([0x82, 0x03]) + b"abc", 1002),  # unmasked client frame
        (bytes([0x83, 0x80, 0, 0, 0, 0]), 1002),  # reserved opcode
        (bytes([0x09, 0x80, 0, 0, 0, 0]), 1002),  # fragmented control frame
        (bytes([0x89, 0xFE, 0x00, 0x80]) + b"\0" * 4 + b"p" * 128, 1002),  # 128-byte ping
        (bytes([0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28]), 1007),  # text that is not UTF-8
    ],
)
def test_protocol_violations_get_the_matching_close_code(frame: bytes, code: int) -> None:
    async def talk(c: Client) -> None:
        await c.upgrade()
        await c.send_raw(frame)
        events = await c.events()
        assert isinstance(events[-1], CloseConnection) and events[-1].code == code

    run(echo, talk)


def test_the_close_handshake_answers_the_client_and_ends_the_receive() -> None:
    received: list[object] = []

    async def serve(ws: WsConnection) -> None:
        await ws.accept()
        received.append(await ws.receive())
        with pytest.raises(trio.ClosedResourceError):
            await ws.send_message(b"too late")

    async def talk(c: Client) -> None:
        await c.upgrade()
        await c.send(CloseConnection(code=1001, reason="bye"))
        events = await c.events()
        assert [type(e) for e in events] == [CloseConnection]
        assert events[0].code == 1001  # type: ignore[attr-defined]

    run(serve, talk)
    assert received == [None]


def test_a_request_that_is_not_an_upgrade_gets_400() -> None:
    failures: list[str] = []

    async def serve(ws: WsConnection) -> None:
        try:
            await ws.accept()
        except HandshakeFailed as e:
            failures.append(str(e))

    async def talk(c: Client) -> None:
        await c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while data := await c.stream.receive_some(4096):
            head += data
        assert head.startswith(b"HTTP/1.1 400")

    run(serve, talk)
    assert failures


@pytest.mark.parametrize("pad", [17_000, 40_000])
def test_an_upgrade_head_over_16_kib_is_refused_even_when_it_arrives_in_one_piece(
    pad: int,
) -> None:
    # h11 (under wsproto) measures only a head still incomplete: one that arrives whole in a
    # read must be held to the same limit.
    failures: list[str] = []

    async def serve(ws: WsConnection) -> None:
        try:
            await ws.accept()
        except HandshakeFailed as e:
            failures.append(str(e))

    async def talk(c: Client) -> None:
        head = Client(c.stream).ws.send(
            Request(host="test", target="/", extra_headers=[(b"x-pad", b"a" * pad)])
        )
        await c.send_raw(head)
        answer = b""
        while data := await c.stream.receive_some(4096):
            answer += data
        assert answer.startswith(b"HTTP/1.1 400"), answer[:40]

    run(serve, talk)
    assert failures and "16384" in failures[0]


def test_an_upgrade_head_just_under_16_kib_is_accepted() -> None:
    paths: list[str] = []

    async def serve(ws: WsConnection) -> None:
        paths.append(await ws.accept())

    async def talk(c: Client) -> None:
        await c.send(Request(host="test", target="/", extra_headers=[(b"x-pad", b"a" * 16_000)]))
        c.ws.receive_data(await c.stream.receive_some(65536))
        assert isinstance(next(iter(c.ws.events())), AcceptConnection)

    run(serve, talk)
    assert paths == ["/"]
