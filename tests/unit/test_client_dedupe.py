"""The session's de-duplication and gap detection (client.dedupe), and its backoff."""

from __future__ import annotations

import random

from client.backoff import Backoff
from client.dedupe import Delivered
from client.models import Message
from proto.wkproto import HeaderFlag


def msg(seq: int, message_id: int | None = None, channel: str = "team", flags: int = 0) -> Message:
    return Message(
        message_id=message_id if message_id is not None else 100 + seq,
        message_seq=seq,
        client_msg_no=f"c-{seq}",
        from_uid="alice",
        channel_id=channel,
        channel_type=2,
        timestamp=0,
        payload=b"",
        flags=flags,
    )


def test_a_message_is_delivered_once_whether_it_comes_by_seq_or_by_id() -> None:
    d = Delivered()
    assert d.accept(msg(1))
    assert not d.accept(msg(1))  # the same message again (live after sync)
    assert not d.accept(msg(1, message_id=999))  # at or below the channel's last seq
    assert d.accept(msg(2))
    assert d.last_seq(("team", 2)) == 2


def test_channels_are_tracked_separately() -> None:
    d = Delivered()
    assert d.accept(msg(5, channel="a"))
    assert d.accept(msg(1, channel="b"))
    assert d.channels() == [(("a", 2), 5), (("b", 2), 1)]


def test_messages_without_a_seq_are_deduplicated_by_id_only() -> None:
    d = Delivered()
    assert d.accept(msg(3))
    online = msg(0, message_id=77, flags=HeaderFlag.NO_PERSIST)
    assert d.accept(online) and not d.accept(online)
    command = msg(1, message_id=78, flags=HeaderFlag.SYNC_ONCE)
    # A command message's seq belongs to the command twin: it neither moves nor meets the
    # channel's last seq.
    assert d.accept(command)
    assert d.last_seq(("team", 2)) == 3
    assert d.gap(msg(9, flags=HeaderFlag.SYNC_ONCE)) is None


def test_a_gap_is_reported_between_the_last_seq_and_a_later_message() -> None:
    d = Delivered()
    assert d.gap(msg(7)) is None  # nothing to compare with yet
    d.accept(msg(7))
    assert d.gap(msg(8)) is None
    assert d.gap(msg(11)) == (8, 11)


def test_follow_sets_the_start_but_never_moves_a_channel_back() -> None:
    d = Delivered()
    d.follow(("team", 2), 10)
    assert not d.accept(msg(10))
    assert d.accept(msg(11))
    d.follow(("team", 2), 3)
    assert d.last_seq(("team", 2)) == 11


def test_own_sends_are_not_delivered_back_and_move_the_seq_only_when_contiguous() -> None:
    d = Delivered()
    d.sent(("bob", 1), message_id=500, message_seq=4)
    assert d.last_seq(("bob", 1)) == 4  # tracking starts: replies are caught up after reconnects
    d.sent(("bob", 1), message_id=501, message_seq=5)
    assert d.last_seq(("bob", 1)) == 5
    # Someone else's seq 6 may still be on its way: 7 must not hide it.
    d.sent(("bob", 1), message_id=503, message_seq=7)
    assert d.last_seq(("bob", 1)) == 5
    assert not d.accept(msg(7, message_id=503, channel="bob"))  # our own, read back
    assert d.accept(msg(6, message_id=502, channel="bob"))


def test_memory_is_bounded() -> None:
    d = Delivered(max_ids=3, max_channels=2)
    for seq in range(1, 6):
        assert d.accept(msg(seq, channel=f"c{seq}"))
    assert [key for key, _ in d.channels()] == [("c4", 2), ("c5", 2)]
    # The oldest ids are forgotten; a channel still tracked still refuses old seqs.
    assert d.accept(msg(1, channel="c1"))
    assert not d.accept(msg(5, message_id=1, channel="c5"))


def test_backoff_grows_to_its_cap_with_jitter_of_at_most_half() -> None:
    b = Backoff(0.1, 1.0)
    rng = random.Random(1)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (4, 1.0), (60, 1.0)]:
        waits = [b.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert max(waits) - min(waits) > ceiling / 4  # jittered, not constant
