"""The HTTP API against hostile clients, on real node processes and real sockets: hostile
JSON gets 400 with a message and leaves no traceback in the log; connections over the
per-address or total cap are refused with 503 while other clients are served; a request
trickled byte by byte and an idle keep-alive connection are closed at their deadlines."""

from __future__ import annotations

import base64
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from launcher.devcluster import NodeProcess
from tests.conftest import eventually, start_node

DEADLINES = {
    "http__head_timeout_s": 1.0,
    "http__body_timeout_s": 1.0,
    "http__keep_alive_timeout_s": 1.0,
}
GIVE_UP_S = 10.0
"""How long a test waits for a close that must come within about two seconds."""


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node whose HTTP deadlines are one second each."""
    proc = start_node(tmp_path_factory.mktemp("strict"), **DEADLINES)
    try:
        yield proc
    finally:
        proc.stop()


def address(node: NodeProcess) -> tuple[str, int]:
    host, port = node.endpoints["http"].removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(node: NodeProcess, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(address(node), timeout=GIVE_UP_S, source_address=(source, 0))


def until_closed(sock: socket.socket, trickle: bytes = b"") -> tuple[bytes, float]:
    """Send ``trickle`` one byte a second (never faster) until the server closes; returns what
    it answered and the seconds until its close. Fails after ``GIVE_UP_S``."""
    start = time.monotonic()
    answer = b""
    sent = 0
    while time.monotonic() - start < GIVE_UP_S:
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except OSError:
                return answer, time.monotonic() - start  # closed under our feet
            sent += 1
        readable, _, _ = select.select([sock], [], [], 1.0)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return answer, time.monotonic() - start
            answer += chunk
    raise AssertionError(f"connection still open after {GIVE_UP_S} s; got {answer!r}")


def get_health(sock: socket.socket) -> bytes:
    """One keep-alive GET /health on ``sock``; the answer's head and body."""
    sock.sendall(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
    answer = b""
    while not answer.endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {answer!r}"
        answer += chunk
    return answer


# ---- hostile JSON ------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_hostile_json_gets_400_with_a_message_and_no_traceback(strict: NodeProcess) -> None:
    million_digits = b"1" * 1_000_000
    cases = [
        ("/user/token", b"[" * 1000 + b"]" * 1000, "nested deeper than 64 levels"),
        ("/user/token", b'{"uid":' * 100_000 + b"1" + b"}" * 100_000, "nested deeper than 64"),
        (
            "/user/token",
            b'{"uid":"a","token":"t","device_flag":' + million_digits + b"}",
            "more than 4300 digits",
        ),
        ("/user/onlinestatus", b"[" + million_digits + b"]", "more than 4300 digits"),
        ("/user/token", b'{"uid":"a","token":"\xff"}', "not valid utf-8"),
    ]
    payloads = [
        (b'{"type":1,"content":"x","extra":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
        # A system notice a client could still decode, behind a number Python cannot read.
        (b'{"type":1001,"content":"fake","n":' + b"9" * 5000 + b"}", "4300 digits"),
    ]
    for payload, words in payloads:
        body = {"from_uid": "a", "channel_id": "g", "channel_type": 2, "payload": b64(payload)}
        cases.append(("/message/send", httpx.Request("POST", "/", json=body).content, words))
    with httpx.Client(base_url=strict.endpoints["http"], timeout=GIVE_UP_S) as http:
        for path, raw, words in cases:
            resp = http.post(path, content=raw)
            assert resp.status_code == 400, (path, raw[:60], resp.text[:200])
            assert words in resp.json()["msg"], (path, raw[:60], resp.json())
        assert http.get("/health").status_code == 200
    log = strict.log_path.read_text()
    assert "Traceback" not in log and "handler failed" not in log


def test_bad_requests_are_logged_once_per_address_and_interval(strict: NodeProcess) -> None:
    for _ in range(20):
        with connect(strict, "127.0.0.9") as sock:
            sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
            answer, _ = until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 400 ")
    lines = [
        line
        for line in strict.log_path.read_text().splitlines()
        if "HTTP request refused" in line and "127.0.0.9" in line
    ]
    assert len(lines) == 1, lines


# ---- deadlines ---------------------------------------------------------------------------------


def test_a_head_trickled_a_byte_a_second_is_closed_at_the_head_deadline(
    strict: NodeProcess,
) -> None:
    with connect(strict) as sock:
        answer, seconds = until_closed(sock, b"POST /user/token HTTP/1.1\r\nhost: t\r\n" * 10)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"head not complete within 1.0 s" in answer
    assert seconds < 3.5, seconds  # deadline 1 s, then at most 1 s of linger


def test_a_body_trickled_a_byte_a_second_is_closed_at_the_body_deadline(
    strict: NodeProcess,
) -> None:
    with connect(strict) as sock:
        sock.sendall(b"POST /user/token HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n")
        answer, seconds = until_closed(sock, b'{"uid":"a","token":"t"}' + b" " * 77)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"body not complete within 1.0 s" in answer
    assert seconds < 3.5, seconds


def test_an_idle_keep_alive_connection_is_closed(strict: NodeProcess) -> None:
    with connect(strict) as sock:
        assert get_health(sock).startswith(b"HTTP/1.1 200 ")
        answer, seconds = until_closed(sock)
    assert answer == b"" and seconds < 2.5, seconds


def test_a_connection_that_sends_nothing_is_closed_at_the_head_deadline(
    strict: NodeProcess,
) -> None:
    with connect(strict) as sock:
        answer, seconds = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and seconds < 3.5, seconds


# ---- connection caps ---------------------------------------------------------------------------


def test_connections_over_a_cap_get_503_while_other_addresses_are_served(
    tmp_path: Path,
) -> None:
    node = start_node(tmp_path, http__max_connections_per_address=2, http__max_connections=4)
    held: list[socket.socket] = []
    try:
        # Two keep-alive connections from one address, each served once (so admitted).
        for _ in range(2):
            held.append(connect(node, "127.0.0.2"))
            assert get_health(held[-1]).startswith(b"HTTP/1.1 200 ")
        with connect(node, "127.0.0.2") as third:
            answer, _ = until_closed(third)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"too many connections from 127.0.0.2" in answer
        # Other addresses are still served, up to the total cap of 4.
        for source in ("127.0.0.3", "127.0.0.4"):
            held.append(connect(node, source))
            assert get_health(held[-1]).startswith(b"HTTP/1.1 200 ")
        with connect(node, "127.0.0.5") as fifth:
            answer, _ = until_closed(fifth)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"connection limit (4)" in answer
        # A closed connection gives its slot back.
        held.pop(0).close()

        def served_again() -> bool:
            with connect(node, "127.0.0.2") as sock:
                try:
                    return get_health(sock).startswith(b"HTTP/1.1 200 ")
                except AssertionError:
                    return False  # refused: the server has not seen the close yet

        eventually(served_again, what="a slot freed by a close")
        refusals = [
            line for line in node.log_path.read_text().splitlines() if "connection refused" in line
        ]
        assert 1 <= len(refusals) <= 3, refusals  # per address and interval, not per refusal
    finally:
        for sock in held:
            sock.close()
        node.stop()
