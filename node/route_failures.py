"""How a request routed to a slot group's leader fails, and the pure decisions the router's
retry loop makes on it (``Router._retrying``); the model tests make the same decisions.

A failure travels as its name: in a peer's ``SendOutcome.failure`` and as a ``ProposalError``'s
kind. ``Failure.of`` reads one, so that a name this revision does not know (a newer peer)
counts as ``unknown``: the request may or may not have happened."""

from __future__ import annotations

import enum

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ReasonCode


class Failure(enum.StrEnum):
    NO_LEADER = "no_leader"
    """The group has no leader now: nothing was proposed."""
    NOT_LEADER = "not_leader"
    """The node asked does not lead the group (a stale view): nothing was proposed."""
    UNKNOWN = "unknown"
    """Proposed, but its fate is unknown (timed out, or the leader changed)."""
    FORWARD_FAILED = "forward_failed"
    """The leader could not be asked, or its answer was lost."""

    @classmethod
    def of(cls, name: str) -> Failure:
        try:
            return cls(name)
        except ValueError:
            return cls.UNKNOWN


REASON_OF_FAILURE: dict[Failure, ReasonCode] = {
    Failure.NO_LEADER: ReasonCode.NODE_MATCH_ERROR,
    Failure.NOT_LEADER: ReasonCode.NODE_NOT_MATCH,
    Failure.UNKNOWN: ReasonCode.NODE_NOT_MATCH,
    Failure.FORWARD_FAILED: ReasonCode.FORWARD_SEND_PACKET_ERROR,
}
"""The reason code a client gets when retries run out."""

STATUS_FAILURE: dict[int, Failure] = {
    pb.Status.NOT_LEADER: Failure.NOT_LEADER,
    pb.Status.NO_LEADER: Failure.NO_LEADER,
    pb.Status.UNKNOWN_GROUP: Failure.NOT_LEADER,
    pb.Status.TIMEOUT: Failure.UNKNOWN,
}
"""A peer's refusal (``pb.Status``) as a failure; any other code is ``unknown``."""


def may_have_committed(failure: Failure) -> bool:
    """An attempt that failed this way may still commit: its proposal's outcome is unknown
    (timed out, leader changed) or the leader's answer was lost."""
    return failure in (Failure.UNKNOWN, Failure.FORWARD_FAILED)


def rotate_after(failure: Failure, hint: int | None, target: int) -> bool:
    """Whether to guess the next replica as leader after ``target`` failed: it could not be
    reached, or it refused without a fresh hint (a refusal's hint is kept; one that names the
    node that just refused is not fresh)."""
    return failure == Failure.FORWARD_FAILED or (
        failure == Failure.NOT_LEADER and hint in (None, target)
    )


def give_up_failure(failure: Failure, maybe_committed: bool) -> Failure:
    """The failure answered when retries run out. Once an attempt may have committed, the answer
    must not claim that nothing was (``no_leader`` = 17 NodeMatchError): it is ``unknown``."""
    if maybe_committed and failure in (Failure.NO_LEADER, Failure.NOT_LEADER):
        return Failure.UNKNOWN
    return failure
