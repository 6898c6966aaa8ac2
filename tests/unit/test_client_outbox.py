"""The terminal client's outbox: bounded, in order, one ``client_msg_no`` per line for every
attempt, refusals reported and skipped (the session is a stand-in: its retries are tested in
test_client_session_send.py and against real nodes)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from client.errors import SendRefused, Unreachable
from client.outbox import Outbox, Outgoing, send_queued
from client.session import Session
from proto.wkproto import ReasonCode


class Sends:
    """Records sends; refuses the texts in ``refuse``, fails the session at ``fail``."""

    def __init__(self, refuse: tuple[str, ...] = (), fail: str = "") -> None:
        self.sent: list[tuple[str, int, str, str]] = []
        self.refuse, self.fail = refuse, fail
        self.timeouts: list[float] = []

    async def send(
        self, channel_id: str, channel_type: int, payload: bytes, *, client_msg_no: str,
        timeout_s: float, **options: Any,
    ) -> None:  # fmt: skip
        await trio.sleep(0)
        content = json.loads(payload)["content"]
        self.timeouts.append(timeout_s)
        if content == self.fail:
            raise Unreachable("gone", [])
        if content in self.refuse:
            raise SendRefused(ReasonCode.NOT_IN_WHITELIST, client_msg_no)
        self.sent.append((channel_id, channel_type, content, client_msg_no))


def as_session(s: Sends) -> Session:
    return s  # type: ignore[return-value]


def test_lines_go_in_order_with_the_client_msg_no_given_when_typed() -> None:
    outbox = Outbox()
    sends = Sends(refuse=("two",))
    refused: list[tuple[Outgoing, ReasonCode]] = []

    async def main() -> None:
        queued = [outbox.put(t) for t in ("one", "two", "three")]
        assert all(q is not None for q in queued)
        assert len({q.client_msg_no for q in queued if q}) == 3
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                send_queued,
                as_session(sends),
                ("bob", 1),
                outbox,
                lambda line, e: refused.append((line, e.reason_code)),
            )
            await outbox.wait_empty()
            nursery.cancel_scope.cancel()
        assert [(c, n) for _, _, c, n in sends.sent] == [
            ("one", queued[0].client_msg_no),  # type: ignore[union-attr]
            ("three", queued[2].client_msg_no),  # type: ignore[union-attr]
        ]
        assert refused == [(queued[1], ReasonCode.NOT_IN_WHITELIST)]
        # A line waits as long as the session is away: no deadline of its own.
        assert sends.timeouts == [float("inf")] * 3

    trio.run(main)


def test_the_outbox_is_bounded() -> None:
    outbox = Outbox(limit=2)
    assert outbox.put("a") and outbox.put("b")
    assert outbox.put("c") is None
    assert len(outbox) == 2


def test_the_session_giving_up_ends_sending_with_its_error() -> None:
    outbox = Outbox()
    outbox.put("x")

    async def main() -> None:
        await send_queued(as_session(Sends(fail="x")), ("bob", 1), outbox, lambda *a: None)

    with pytest.raises(Unreachable):
        trio.run(main)
    assert len(outbox) == 1  # not sent: still counted when the chat says goodbye
