"""Hand-written schedules through the same model: the paths the search must be able to reach,
pinned down, and a broken retry decision caught by the checks.

Group 1 is replicated on nodes 1, 2, 3 and led by node 1 at boot; group 2 on nodes 4, 1, 2, led
by node 4. Node 2's election timeout fires first (500 ms), then node 3's (700 ms).
"""

from __future__ import annotations

from typing import Any

import pytest

from proto.wkproto import ReasonCode

from . import sim
from .harness import ClusterModel, Schedule, play
from .sim import CHANNELS, GROUP, LEADER, NODE_IDS, PERSON, PLACEMENT, StorePool

IN_GROUP_1 = (PERSON, "u1@u4")
GROUP_CHANNEL = (GROUP, "g1")


def send(node: int, *channels: tuple[int, str], uid: str = "u1", lag: bool = False) -> Any:
    return ("send", {"node": node, "channels": list(channels), "uid": uid, "lag": lag})


def test_layout_of_the_schedules() -> None:
    assert PLACEMENT.groups == {1: [1, 2, 3], 2: [4, 1, 2]}
    assert PLACEMENT.group_of(IN_GROUP_1[1]) == 1
    assert PLACEMENT.group_of(GROUP_CHANNEL[1]) == 2


def test_sends_through_every_node_get_contiguous_seqs(store_pool: StorePool) -> None:
    schedule: Schedule = [send(n, *CHANNELS) for n in NODE_IDS]
    schedule += [send(3, GROUP_CHANNEL, uid="u3"), ("deliver_all", {})]
    schedule += [("advance", {"ms": 300, "deliver": True})]
    machine = play(ClusterModel, schedule)
    attempts = machine.world.attempts
    for channel in CHANNELS:
        seqs = sorted(a.message_seq for a in attempts[:-1] if a.channel_id == channel[1])
        assert seqs == [1, 2, 3, 4], channel
    assert all(a.reason == ReasonCode.SUCCESS for a in attempts[:-1])
    assert attempts[-1].reason == ReasonCode.SUBSCRIBER_NOT_EXIST  # u3 is no subscriber
    assert machine.world.counts["forward calls"] > 0


UNKNOWN_OUTCOME: Schedule = [
    # Node 2 forwards the send to node 1, which appends it and replicates it to node 3 only;
    # nothing else arrives. Node 2's call times out (forward_failed: it may have committed),
    # and its retries find no leader until forward_timeout_s passes.
    send(2, IN_GROUP_1),
    ("deliver", {"pick": 0, "count": 1}),  # ForwardSends -> node 1
    ("deliver", {"pick": 1, "count": 1}),  # AppendEntries -> node 3
    ("advance", {"ms": 8000, "deliver": False}),
    # Nodes 1 and 3 hold the entry, so one of them leads next and commits it.
    ("advance", {"ms": 3000, "deliver": True}),
    ("retry", {"node": 3, "pick": 0, "twice": False, "lag": False}),
    ("advance", {"ms": 500, "deliver": True}),
]


def test_an_outcome_that_may_have_committed_is_answered_18_and_the_retry_gets_its_ids(
    store_pool: StorePool,
) -> None:
    machine = play(ClusterModel, UNKNOWN_OUTCOME)
    first, retry = machine.world.attempts
    assert first.reason == ReasonCode.NODE_NOT_MATCH
    assert retry.reason == ReasonCode.SUCCESS and retry.duplicate
    leader = next(r for n in (1, 3) if (r := machine.world.nodes[n].replicas[1]).role == LEADER)
    stored = leader.disk.store.get_message(PERSON, IN_GROUP_1[1], retry.message_seq)
    assert stored is not None and stored.payload == first.payload  # the first attempt's
    assert machine.world.counts["forward timeouts"] == 1


def test_the_checks_catch_a_router_that_answers_17_after_a_possible_commit(
    store_pool: StorePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sim._decisions, "give_up_failure", lambda failure, maybe: failure)
    with pytest.raises(AssertionError, match=r"answered 17 \(nothing committed\)"):
        play(ClusterModel, UNKNOWN_OUTCOME)


def test_without_a_leader_the_answer_is_17_and_nothing_commits(store_pool: StorePool) -> None:
    schedule: Schedule = [
        ("partition", {"island": {2}}),
        ("advance", {"ms": 1000, "deliver": True}),  # node 2 campaigns alone
        send(2, IN_GROUP_1),
        ("advance", {"ms": 6000, "deliver": True}),
    ]
    machine = play(ClusterModel, schedule)
    (attempt,) = machine.world.attempts
    assert attempt.reason == ReasonCode.NODE_MATCH_ERROR
    store = machine.world.disks[(2, 1)].store
    assert store.head_seq(PERSON, IN_GROUP_1[1]) == 0


def test_a_command_queued_by_a_deposed_leader_goes_to_the_new_one(store_pool: StorePool) -> None:
    schedule: Schedule = [
        ("campaign", {"node": 2, "group": 1}),
        # Node 1 still leads: it queues the batch, but its Raft driver takes it only after
        # the vote requests arrived (and node 2 won): pysyncobj hands it to node 2.
        send(1, IN_GROUP_1, lag=True),
        ("deliver_all", {}),
        ("advance", {"ms": 300, "deliver": True}),
    ]
    machine = play(ClusterModel, schedule)
    (attempt,) = machine.world.attempts
    assert attempt.reason == ReasonCode.SUCCESS and attempt.message_seq == 1
    assert machine.world.counts["commands handed to a leader"] == 1
    new_leader = machine.world.nodes[2].replicas[1]
    assert new_leader.role == LEADER and new_leader.term == 2
