"""``Session.send`` across a lost connection, with stand-in connections (the real ones are in
tests/integration/test_client_session.py and test_client_cli.py)."""

from __future__ import annotations

from typing import Any

import trio

from client.backoff import Backoff
from client.dedupe import Delivered
from client.errors import ClientClosed
from client.session import Session
from client.wkproto import SendResult, WKClient
from proto.wkproto import ChannelType, ReasonCode


class ClosedConnection:
    """A connection that has ended: every send fails at once, as ``WKClient.send`` does."""

    def __init__(self) -> None:
        self.sends: list[str] = []

    async def send(self, *args: Any, client_msg_no: str, **kwargs: Any) -> SendResult:
        self.sends.append(client_msg_no)
        if len(self.sends) > 100:
            raise AssertionError("send retried the same closed connection without yielding")
        raise ClientClosed("connection closed by the server")


class Answering:
    def __init__(self) -> None:
        self.sends: list[str] = []

    async def send(self, *args: Any, client_msg_no: str, **kwargs: Any) -> SendResult:
        self.sends.append(client_msg_no)
        return SendResult(7, 3, ReasonCode.SUCCESS, 1, client_msg_no)


def session() -> Session:
    return Session(
        [("127.0.0.1", 5100)],
        uid="alice",
        token="t",
        http=None,
        transport="tcp",
        encrypt=True,
        device_flag=0,
        device_id="d",
        backoff=Backoff(0.01, 0.01),
        connect_timeout_s=1.0,
        delivered=Delivered(),
    )


def as_client(c: object) -> WKClient:
    return c  # type: ignore[return-value]


def test_a_send_cut_off_waits_for_the_next_connection_and_keeps_its_client_msg_no() -> None:
    # The connection ends while the session's own task has not yet let go of it: the send
    # must wait for the next connection (yielding meanwhile), not spin on the closed one.
    closed, answering = ClosedConnection(), Answering()
    s = session()

    async def main() -> None:
        s._set_client(as_client(closed))
        async with trio.open_nursery() as nursery:

            async def reconnect() -> None:
                await trio.sleep(0)
                s._set_client(None)
                await trio.sleep(0)
                s._set_client(as_client(answering))

            nursery.start_soon(reconnect)
            result = await s.send("bob", ChannelType.PERSON, b"x", client_msg_no="n1")
        assert result.message_id == 7

    trio.run(main)
    assert closed.sends[:1] == ["n1"]
    assert len(closed.sends) == 1
    assert answering.sends == ["n1"]
