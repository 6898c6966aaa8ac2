"""The HTTP server's connection handling against hostile clients, on in-memory streams with
trio's autojump clock (virtual time: a 30 s stall costs nothing): deadlines for the head, the
body, the response and an idle keep-alive connection, body and JSON limits, the connection
caps, and a failing connection that ends alone and is logged once."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import pytest
import trio
import trio.testing

from node.config_sections import HttpSection
from node.http.listener import HttpServer
from node.http.server import Request, Response, Router

Scenario = Callable[[HttpServer, trio.Nursery], Awaitable[None]]


def make_server(**settings: Any) -> HttpServer:
    router = Router()

    @router.route("POST", "/echo")
    async def echo(req: Request) -> Response:
        return Response(200, {"echo": req.json()})

    @router.route("GET", "/health")
    async def health(req: Request) -> Response:
        return Response(200, {"status": "ok"})

    return HttpServer(router, HttpSection(**settings))


def run(scenario: Scenario, **settings: Any) -> None:
    async def main() -> None:
        server = make_server(**settings)
        # Virtual time: a server that never gives up fails the test instead of hanging it.
        with trio.fail_after(1000):
            async with trio.open_nursery() as nursery:
                await scenario(server, nursery)
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def connect(server: HttpServer, nursery: trio.Nursery, address: str = "10.0.0.1") -> Any:
    client, served = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle_connection, served, address)
    return client


def request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: t"]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def answer(stream: Any, conn: h11.Connection | None = None) -> tuple[int, Any]:
    """The next response on ``stream``: (status, decoded JSON body)."""
    conn = conn or h11.Connection(h11.CLIENT)
    if conn.our_state is h11.IDLE:
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "t")]))
        conn.send(h11.EndOfMessage())
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, json.loads(body)
        else:
            raise AssertionError(f"no response: {event}")


async def closed_after(stream: Any) -> float:
    """Virtual seconds until the server closes ``stream`` (it reads EOF); drops what arrives."""
    start = trio.current_time()
    while await stream.receive_some(65536):
        pass
    return trio.current_time() - start


def test_keep_alive_serves_several_requests_then_closes_when_idle() -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        c = connect(server, nursery)
        for n in range(3):
            await c.send_all(request("POST", "/echo", json.dumps([n]).encode()))
            conn = h11.Connection(h11.CLIENT)
            assert await answer(c, conn) == (200, {"echo": [n]})
        assert await closed_after(c) == pytest.approx(7.0)

    run(scenario, keep_alive_timeout_s=7.0)


def test_a_trickled_head_is_answered_408_and_closed_at_the_head_deadline() -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        c = connect(server, nursery)
        start = trio.current_time()

        async def trickle() -> None:
            for byte in request("GET", "/health")[:-2]:  # never completes the head
                await c.send_all(bytes([byte]))
                await trio.sleep(1)

        nursery.start_soon(trickle)
        status, body = await answer(c)
        assert status == 408 and "head not complete within 3.0 s" in body["msg"]
        await closed_after(c)
        # The answer at the deadline, the close after at most the linger (1 s).
        assert 3.0 <= trio.current_time() - start <= 4.0 + 1e-6

    run(scenario, head_timeout_s=3.0)


def test_the_head_deadline_of_a_later_request_runs_from_its_first_byte() -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        c = connect(server, nursery)
        await c.send_all(request("GET", "/health"))
        conn = h11.Connection(h11.CLIENT)
        assert (await answer(c, conn))[0] == 200
        await trio.sleep(20)  # idle, within keep-alive, longer than a head deadline
        await c.send_all(request("GET", "/health"))
        assert (await answer(c, h11.Connection(h11.CLIENT)))[0] == 200

    run(scenario, head_timeout_s=3.0, keep_alive_timeout_s=30.0)


def test_a_trickled_body_is_answered_408_at_the_body_deadline() -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        c = connect(server, nursery)
        head = request("POST", "/echo", b"[1]" * 10)[:-30]  # head plus no body
        await c.send_all(head)
        start = trio.current_time()

        async def trickle() -> None:
            for _ in range(30):
                await c.send_all(b" ")
                await trio.sleep(1)

        nursery.start_soon(trickle)
        status, body = await answer(c)
        assert status == 408 and "body not complete within 2.0 s" in body["msg"]
        assert trio.current_time() - start == pytest.approx(2.0)
        assert await closed_after(c) <= 1.0 + 1e-6

    run(scenario, body_timeout_s=2.0)


def test_a_client_that_does_not_read_its_answer_is_disconnected() -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        client, served = trio.testing.lockstep_stream_pair()  # no buffer: writes wait for reads
        nursery.start_soon(server.handle_connection, served, "10.0.0.1")
        await client.send_all(request("GET", "/health"))
        await trio.sleep(60)
        with pytest.raises(trio.BrokenResourceError):
            # The server gave up its write at the deadline and closed.
            await client.send_all(request("GET", "/health"))
            await client.receive_some(1)

    run(scenario, send_timeout_s=5.0)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels"),
        (b"[" + b"9" * 1_000_000 + b"]", "more than 4300 digits"),
        (b"{nope", "not valid JSON"),
    ],
)
def test_hostile_json_is_a_400_with_a_message(body: bytes, words: str) -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        c = connect(server, nursery)
        await c.send_all(request("POST", "/echo", body))
        status, answer_body = await answer(c)
        assert status == 400 and words in answer_body["msg"], answer_body

    run(scenario)


def test_the_json_depth_is_a_setting() -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        c = connect(server, nursery)
        await c.send_all(request("POST", "/echo", b"[[[1]]]"))
        status, body = await answer(c)
        assert status == 400 and "deeper than 2" in body["msg"]

    run(scenario, max_json_depth=2)


def test_a_declared_body_over_the_limit_is_413_before_it_is_sent() -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        c = connect(server, nursery)
        await c.send_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 999999\r\n\r\n")
        status, body = await answer(c)
        assert status == 413 and "999999" in body["msg"]

    run(scenario, max_body_bytes=4096)


@pytest.mark.parametrize("size", [2100, 2048 + 65536 + 100])
def test_a_head_over_the_limit_is_431_even_when_it_arrives_in_one_piece(size: int) -> None:
    # h11 measures only a head still incomplete: one that arrives whole in a read, up to a
    # read's size past the limit, must be refused all the same.
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        c = connect(server, nursery)
        head = request("GET", "/health", x_pad="a" * size)
        await c.send_all(head)
        status, body = await answer(c)
        assert status == 431 and "2048" in body["msg"], body

    run(scenario, max_head_bytes=2048)


def test_a_head_within_the_limit_is_served() -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        c = connect(server, nursery)
        head = request("GET", "/health", x_pad="a" * 1900)
        assert len(head) <= 2048
        await c.send_all(head)
        assert await answer(c) == (200, {"status": "ok"})

    run(scenario, max_head_bytes=2048)


def test_over_the_per_address_cap_a_connection_gets_503_and_others_are_served() -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        held = [connect(server, nursery, "10.0.0.1") for _ in range(2)]
        await trio.testing.wait_all_tasks_blocked()
        third = connect(server, nursery, "10.0.0.1")
        status, body = await answer(third)
        assert status == 503 and "too many connections from 10.0.0.1" in body["msg"]
        assert await closed_after(third) <= 1.0
        other = connect(server, nursery, "10.0.0.2")
        await other.send_all(request("GET", "/health"))
        assert (await answer(other))[0] == 200
        await held[0].aclose()  # a slot comes back
        await trio.testing.wait_all_tasks_blocked()
        again = connect(server, nursery, "10.0.0.1")
        await again.send_all(request("GET", "/health"))
        assert (await answer(again))[0] == 200

    run(scenario, max_connections_per_address=2, head_timeout_s=100.0)


def test_over_the_total_cap_a_connection_gets_503() -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        for n in range(3):
            connect(server, nursery, f"10.0.0.{n}")
        await trio.testing.wait_all_tasks_blocked()
        status, body = await answer(connect(server, nursery, "10.0.0.9"))
        assert status == 503 and "connection limit (3)" in body["msg"]
        assert server.admission.total == 3

    run(scenario, max_connections=3, head_timeout_s=100.0)


def test_refusals_beyond_the_cap_are_closed_without_an_answer() -> None:
    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        connect(server, nursery, "10.0.0.1")
        await trio.testing.wait_all_tasks_blocked()
        first = connect(server, nursery, "10.0.0.2")  # answered 503, then lingers
        await trio.testing.wait_all_tasks_blocked()
        second = connect(server, nursery, "10.0.0.3")  # one refusal already lingers
        assert await second.receive_some(65536) == b""
        assert (await answer(first))[0] == 503

    run(scenario, max_connections=1, head_timeout_s=100.0)


class BrokenStream(trio.abc.Stream):
    """A stream whose writes fail with an error the server does not expect."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        data, self._data = self._data, b""
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise RuntimeError("bug in a stream")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def test_a_failing_connection_ends_alone_and_is_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("raftchat"), "propagate", True)

    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        for _ in range(5):
            await server.handle_connection(BrokenStream(request("GET", "/health")), "10.0.0.7")
        assert server.admission.total == 0
        c = connect(server, nursery)
        await c.send_all(request("GET", "/health"))
        assert (await answer(c))[0] == 200

    with caplog.at_level(logging.INFO, logger="raftchat.http"):
        run(scenario)
    failures = [r for r in caplog.records if r.getMessage() == "HTTP connection failed"]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_bad_requests_are_logged_once_per_address_and_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("raftchat"), "propagate", True)

    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        for _ in range(50):
            c = connect(server, nursery)
            await c.send_all(b"NOT HTTP\r\n\r\n")
            assert (await answer(c))[0] == 400
            await c.aclose()

    with caplog.at_level(logging.INFO, logger="raftchat.http"):
        run(scenario)
    refused = [r for r in caplog.records if r.getMessage() == "HTTP request refused"]
    assert len(refused) == 1


def test_a_malformed_header_line_is_not_logged_with_what_it_carries(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h11 quotes the offending line in its error; a header line can hold a credential."""
    monkeypatch.setattr(logging.getLogger("raftchat"), "propagate", True)
    secret = "s3cret-api-token-42"

    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        c = connect(server, nursery)
        await c.send_all(f"GET /health HTTP/1.1\r\nhost: t\r\ntoken {secret}\r\n\r\n".encode())
        status, body = await answer(c)
        assert status == 400 and "illegal header line" in body["msg"]

    with caplog.at_level(logging.INFO, logger="raftchat.http"):
        run(scenario)
    (refused,) = [r for r in caplog.records if r.getMessage() == "HTTP request refused"]
    why = refused.fields["why"]  # type: ignore[attr-defined]
    assert "illegal header line" in why and secret not in why


def test_a_head_request_gets_the_head_of_the_answer_and_the_connection_goes_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h11 frames a HEAD answer without a body; writing one raised LocalProtocolError, which
    ended the connection as a server bug (the fuzz campaign logged hundreds)."""
    monkeypatch.setattr(logging.getLogger("raftchat"), "propagate", True)

    async def scenario(server: HttpServer, nursery: trio.Nursery) -> None:
        c = connect(server, nursery)
        await c.send_all(request("HEAD", "/health") + request("GET", "/health"))
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="HEAD", target="/health", headers=[("host", "t")]))
        conn.send(h11.EndOfMessage())
        raw = b""
        while not raw.count(b"HTTP/1.1 "):
            chunk = await c.receive_some(65536)
            assert chunk, "the server closed the connection"
            raw += chunk
        conn.receive_data(raw)
        head = conn.next_event()
        # The routes are GET routes (405 for HEAD), but the answer is a head all the same.
        assert isinstance(head, h11.Response) and head.status_code == 405
        assert isinstance(conn.next_event(), h11.EndOfMessage)  # no body
        conn.start_next_cycle()
        status, _ = await answer(c, conn)  # the next request on the same connection
        assert status == 200

    with caplog.at_level(logging.INFO, logger="raftchat.http"):
        run(scenario)
    assert not [r for r in caplog.records if r.getMessage() == "HTTP connection failed"]
