"""The chat workload's pure parts: turning a ``/conversation/sync`` answer into read-floor
observations, choosing what to mark read, and which RECVs belong in the history."""

from __future__ import annotations

import random
from typing import Any, cast

import pytest
import trio

from chaos.checkers import check_read_floor_regression
from chaos.cluster import ChaosCluster
from chaos.history import FloorValue, MemoryHistory
from chaos.http import HttpError
from chaos.workload import (
    Channel,
    ChatWorkload,
    WorkloadConfig,
    clear_target,
    floor_observations,
    is_stored,
)
from client.wkproto import ReceivedMessage
from node.channels import person_channel_id
from proto.wkproto import ChannelType, HeaderFlag, Recv

PERSON = f"1:{person_channel_id('u1', 'u2')}"
GROUP = "2:g1"


def row(channel_id: str, channel_type: int, **fields: Any) -> dict[str, Any]:
    """A conversation row as docs/api.md shows it (recents left out: the workload asks for 0)."""
    base = {
        "channel_id": channel_id,
        "channel_type": channel_type,
        "unread": 0,
        "mention": 0,
        "timestamp": 1795301183,
        "last_msg_seq": 0,
        "last_client_msg_no": "",
        "readed_to_msg_seq": 0,
        "version": 1795301183120,
        "recents": [],
    }
    return {**base, **fields}


def test_rows_become_observations_under_the_history_channel_keys() -> None:
    answer = [
        # A person conversation is named by the peer: it maps to the canonical a@b key.
        row("u2", 1, unread=2, last_msg_seq=5, readed_to_msg_seq=3),
        row("g1", 2, unread=0, last_msg_seq=9, readed_to_msg_seq=9),
        row("g7", 2, unread=4, last_msg_seq=4),  # not one of the channels asked about
    ]
    seen = floor_observations("u1", answer, {PERSON, GROUP, "2:g2"})
    assert seen == {
        PERSON: FloorValue("u1", floor=3, unread=2, head=5),
        GROUP: FloorValue("u1", floor=9, unread=0, head=9),
    }  # g2 is absent from the answer (no message yet): nothing observed for it


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 200},
        [["u2", 1]],
        [row("u2", 1, unread=True)],
        [row("u2", 1, last_msg_seq="5")],
        [{k: v for k, v in row("u2", 1).items() if k != "readed_to_msg_seq"}],
        [row("u2", "1")],
        [row(7, 1)],
        [row("u2", 1), row("u2", 1, unread=1)],  # one conversation listed twice
    ],
)
def test_an_answer_that_cannot_be_trusted_is_refused_whole(answer: Any) -> None:
    with pytest.raises(ValueError):
        floor_observations("u1", answer, {PERSON, GROUP})


def test_clear_target_is_a_seq_above_the_floor_up_to_the_head_seen() -> None:
    rng = random.Random(7)
    assert clear_target({}, rng) is None
    read_up = {GROUP: FloorValue("u1", floor=4, unread=0, head=4)}
    assert clear_target(read_up, rng) is None  # nothing unread
    unknown = {GROUP: FloorValue("u1", unread=3)}
    assert clear_target(unknown, rng) is None  # without floor and head, nothing to ask for
    seen = {**read_up, PERSON: FloorValue("u1", floor=2, unread=3, head=5)}
    targets = {clear_target(seen, random.Random(i)) for i in range(200)}
    assert targets == {(PERSON, 3), (PERSON, 4), (PERSON, 5)}


def received(seq: int, flags: int, channel_id: str = "u2", from_uid: str = "u2") -> ReceivedMessage:
    frame = Recv(
        setting=0,
        msg_key="",
        from_uid=from_uid,
        channel_id=channel_id,
        channel_type=ChannelType.PERSON,
        client_msg_no=f"c-{seq}",
        message_id=1000 + seq,
        message_seq=seq,
        timestamp=0,
        payload=b"x",
        flags=flags,
    )
    return ReceivedMessage(
        from_uid=frame.from_uid,
        channel_id=frame.channel_id,
        channel_type=frame.channel_type,
        client_msg_no=frame.client_msg_no,
        message_id=frame.message_id,
        message_seq=seq,
        timestamp=0,
        payload=b"x",
        setting=0,
        flags=flags,
        expire=0,
        topic="",
        recv=frame,
    )


def test_online_only_commands_are_not_recorded_as_channel_messages() -> None:
    """After clearUnread the server pushes an unreadClear command to the user's sessions: seq 0,
    no-persist, from nobody. Recorded, it would read as a message nobody sent and, the second
    time, as a repeated seq."""
    command = received(0, HeaderFlag.NO_PERSIST | HeaderFlag.SYNC_ONCE, "u1", "")
    stored = received(4, HeaderFlag.RED_DOT)
    assert not is_stored(command) and is_stored(stored)
    rec = MemoryHistory()
    workload = ChatWorkload(
        cast(ChaosCluster, None), rec, WorkloadConfig(users=2), random.Random(1)
    )
    user = workload.users["u1"]
    workload._record_recv(user, command, "u1/1", 1)
    workload._record_recv(user, command, "u1/1", 1)
    workload._record_recv(user, stored, "u1/1", 1)
    assert [(e.f, e.channel, getattr(e.value, "seq", None)) for e in rec.events] == [
        ("recv", PERSON, 4)
    ]


class FakeCluster:
    """Answers HTTP calls from a script (this is a unit test of the workload's recording; the
    real server is exercised by tests/chaos/test_run.py)."""

    def __init__(self, *answers: tuple[int, Any] | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[int, str, Any]] = []

    async def call(
        self, node: int, method: str, path: str, body: Any = None, timeout_s: float = 10.0
    ) -> tuple[int, Any]:
        self.calls.append((node, path, body))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def workload_with(cluster: FakeCluster) -> tuple[ChatWorkload, MemoryHistory]:
    rec = MemoryHistory()
    w = ChatWorkload(cast(ChaosCluster, cluster), rec, WorkloadConfig(users=2), random.Random(1))
    u = w.users["u1"]
    u.channels = [
        Channel(ChannelType.PERSON, person_channel_id("u1", "u2"), ("u1", "u2")),
        Channel(ChannelType.GROUP, "g1", ("u1", "u2")),
    ]
    return w, rec


def test_read_floors_records_one_op_per_channel_and_nothing_on_failure() -> None:
    answer = [row("u2", 1, last_msg_seq=2, unread=1, readed_to_msg_seq=1)]
    cluster = FakeCluster((200, answer), HttpError("timed out"), (503, {"error": "x"}))
    w, rec = workload_with(cluster)
    u = w.users["u1"]
    seen = trio.run(w.read_floors, u, 2)
    assert seen == {PERSON: FloorValue("u1", floor=1, unread=1, head=2)}
    assert cluster.calls == [(2, "/conversation/sync", {"uid": "u1", "msg_count": 0})]
    # Both ops were invoked before the request and completed after the answer.
    assert [(e.type, e.channel) for e in rec.events] == [
        ("invoke", PERSON), ("invoke", GROUP), ("ok", PERSON), ("fail", GROUP),
    ]  # fmt: skip
    assert trio.run(w.read_floors, u, 1) == {}
    assert trio.run(w.read_floors, u, 1) == {}
    outcomes = [e.type for e in rec.events[4:]]
    assert outcomes.count("fail") == 4 and "ok" not in outcomes
    r = check_read_floor_regression(rec.events)
    assert r.status == "valid" and r.counts["observations"] == 1


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [((200, {"status": 200}), "ok"), ((400, {}), "fail"), ((503, {}), "info"),
     (HttpError("reset"), "info")],
)  # fmt: skip
def test_clear_unread_outcomes(answer: tuple[int, Any] | Exception, outcome: str) -> None:
    cluster = FakeCluster(answer)
    w, rec = workload_with(cluster)
    assert trio.run(w.clear_unread, w.users["u1"], 3, PERSON, 4) == outcome
    # The person conversation is named by the peer, the seq asked for explicitly.
    assert cluster.calls == [
        (3, "/conversations/clearUnread",
         {"uid": "u1", "channel_id": "u2", "channel_type": 1, "message_seq": 4}),
    ]  # fmt: skip
    assert [(e.f, e.type, e.value) for e in rec.events] == [
        ("clear_unread", "invoke", FloorValue("u1", floor=4)),
        ("clear_unread", outcome, FloorValue("u1", floor=4)),
    ]
