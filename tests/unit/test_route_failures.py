"""Failure names from a peer or a proposal error: known ones map, unknown ones are 'unknown'."""

from __future__ import annotations

from node.route_failures import (
    REASON_OF_FAILURE,
    Failure,
    give_up_failure,
    may_have_committed,
)
from proto.wkproto import ReasonCode


def test_a_name_this_revision_does_not_know_counts_as_unknown() -> None:
    assert Failure.of("not_leader") is Failure.NOT_LEADER
    assert Failure.of("some_newer_failure") is Failure.UNKNOWN
    assert Failure.of("") is Failure.UNKNOWN
    assert may_have_committed(Failure.of("some_newer_failure"))  # never claim "nothing"


def test_every_failure_has_a_reason_and_travels_as_its_name() -> None:
    assert set(REASON_OF_FAILURE) == set(Failure)
    assert REASON_OF_FAILURE[Failure.NO_LEADER] == ReasonCode.NODE_MATCH_ERROR
    assert f"{Failure.FORWARD_FAILED}" == "forward_failed"  # SendOutcome.failure on the wire
    assert give_up_failure(Failure.NO_LEADER, maybe_committed=True) is Failure.UNKNOWN
