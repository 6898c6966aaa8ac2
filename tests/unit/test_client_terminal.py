"""What ``raftchat chat`` prints, apart from a terminal: message lines and connection status
lines (tests/integration/test_client_tui.py drives the real thing in tmux)."""

from __future__ import annotations

import trio

from client.errors import ClientClosed, ConnectRefused
from client.models import Message
from client.payloads import text
from client.session import ConnectionState
from client.terminal import ConnectionNotes, format_message, reason
from proto.wkproto import ReasonCode

A, B = ("127.0.0.11", 5100), ("127.0.0.12", 5100)


def msg(payload: bytes, **fields: object) -> Message:
    base: dict[str, object] = dict(
        message_id=1, message_seq=5, client_msg_no="n", from_uid="bob", channel_id="bob",
        channel_type=1, timestamp=0, payload=payload,
    )  # fmt: skip
    base.update(fields)
    return Message(**base)  # type: ignore[arg-type]


def test_message_lines() -> None:
    chat = ("bob", 1)
    assert format_message(msg(text("hi")), chat) == "[5] bob: hi"
    assert format_message(msg(text("hi"), channel_id="team", channel_type=2), chat) == (
        "(team/2) [5] bob: hi"
    )
    assert format_message(msg(text("hi"), from_uid=""), chat) == "[5] system: hi"
    assert format_message(msg(text("hi"), revoked=True), chat) == "[5] bob: (revoked)"
    assert format_message(msg(text("now"), edited=2), chat) == "[5] bob: now (edited)"
    # A hostile uid cannot reach the terminal either.
    assert format_message(msg(b"x", from_uid="\x1b[2Jeve"), chat) == "[5] \\x1b[2Jeve: x"


def test_reasons_are_short() -> None:
    refused = OSError("all attempts to connect to 127.0.0.11:5100 failed")
    refused.__cause__ = ExceptionGroup("all failed", [ConnectionRefusedError(111, "long text")])
    assert reason(refused) == "Connection refused"
    assert reason(trio.TooSlowError()) == "timed out"
    assert reason(ClientClosed("connection closed by the server")) == (
        "connection closed by the server"
    )
    assert reason(None) == "no reason given"


def test_status_lines_of_an_outage_say_each_thing_once() -> None:
    notes = ConnectionNotes()
    lost = ClientClosed("connection closed by the server")

    def gone(address: tuple[str, int], retry_in_s: float) -> ConnectionState:
        return ConnectionState(
            "retrying", address, error=lost, was_connected=True, retry_in_s=retry_in_s
        )

    refused = ConnectionRefusedError(111, "refused")
    said = [
        notes.lines(ConnectionState("connecting", A), 0),
        notes.lines(ConnectionState("connected", A, node_id=1), 0),
        notes.lines(gone(A, 0.23), 2),
        notes.lines(ConnectionState("connecting", B), 2),
        notes.lines(ConnectionState("retrying", B, error=refused, retry_in_s=0.4), 2),
        notes.lines(ConnectionState("connecting", A), 2),
        notes.lines(ConnectionState("retrying", A, error=refused, retry_in_s=0.8), 2),
        # The same failures again: already said.
        notes.lines(ConnectionState("connecting", B), 3),
        notes.lines(ConnectionState("retrying", B, error=refused, retry_in_s=1.6), 3),
        notes.lines(ConnectionState("connecting", A), 3),
        notes.lines(ConnectionState("connected", A, node_id=1), 3),
        notes.lines(gone(A, 0.2), 0),
        notes.lines(ConnectionState("connecting", B), 0),
        notes.lines(ConnectionState("connected", B, node_id=2), 0),
        notes.lines(ConnectionState("failed", B, error=ConnectRefused(ReasonCode.AUTH_FAIL)), 0),
    ]  # fmt: skip
    assert [line for lines in said for line in lines] == [
        "# connecting to 127.0.0.11:5100",
        "# connected to node 1 (127.0.0.11:5100)",
        "# disconnected from node 1 (connection closed by the server), retrying in 0.2 s;"
        " 2 lines queued",
        "# connecting to 127.0.0.12:5100",
        "# cannot connect to 127.0.0.12:5100 (Connection refused), retrying in 0.4 s;"
        " 2 lines queued",
        "# connecting to 127.0.0.11:5100",
        "# cannot connect to 127.0.0.11:5100 (Connection refused), retrying in 0.8 s;"
        " 2 lines queued",
        "# connected to node 1 (127.0.0.11:5100); sending 3 queued lines",
        "# disconnected from node 1 (connection closed by the server), retrying in 0.2 s",
        "# connecting to 127.0.0.12:5100",
        "# connected to node 2 (127.0.0.12:5100)",
    ]


def test_a_server_without_node_ids_is_named_by_its_address() -> None:
    notes = ConnectionNotes()
    gone = ConnectionState("retrying", A, error=ClientClosed("x"), was_connected=True)
    assert notes.lines(ConnectionState("connected", A), 0) == ["# connected to 127.0.0.11:5100"]
    assert notes.lines(gone, 0) == ["# disconnected from 127.0.0.11:5100 (x), retrying in 0.0 s"]
