"""A session's RECV stream per channel never goes backwards or repeats."""

from __future__ import annotations

from typing import Any

import trio

from node.config import Config
from node.gateway.session import GatewayContext, Session
from node.storage import MessageRecord
from proto.wkproto import FrameDecoder, Recv


class _NoTransport:
    kind = "test"
    peer = "test"
    json_rpc = False


def record(seq: int, channel: str = "g1") -> MessageRecord:
    return MessageRecord(
        message_id=1000 + seq,
        message_seq=seq,
        timestamp_ms=1_700_000_000_000,
        channel_id=channel,
        channel_type=2,
        from_uid="alice",
        client_msg_no=f"m{seq}",
        payload=b"x",
    )


def delivered(session: Session) -> list[tuple[str, int]]:
    decoder = FrameDecoder(session.version)
    out: list[tuple[str, int]] = []
    while True:
        try:
            decoder.feed(session._out_recv.receive_nowait())
        except trio.WouldBlock:
            break
    for frame in decoder.frames():
        assert isinstance(frame, Recv)
        out.append((frame.channel_id, frame.message_seq))
    return out


def test_push_drops_repeats_and_older_seqs_per_channel() -> None:
    ctx: Any = GatewayContext(Config(), None, None, None)  # type: ignore[arg-type]
    session = Session(ctx, _NoTransport())  # type: ignore[arg-type]
    session.uid = "bob"
    for seq in (1, 2, 2, 1, 4, 3):
        session.push(record(seq))
    session.push(record(1, channel="g2"))  # another channel keeps its own position
    session.push(record(5))
    assert delivered(session) == [("g1", 1), ("g1", 2), ("g1", 4), ("g2", 1), ("g1", 5)]
