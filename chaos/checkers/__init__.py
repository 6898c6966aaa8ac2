"""Checkers for chaos histories: one function per property of anchors 2.4, each returning a
:class:`CheckResult`, and :func:`check_all` for the verdict of a run.

=========================  =====  ==============================================================
checker                    prop.  flags
=========================  =====  ==============================================================
lost_acked                 P1/P2  an acked send missing from (or moved in) a final read
duplicates                 P3     one (channel, from_uid, client_msg_no) under two seqs
inconsistent_seq           P4/P9  one (channel, seq) seen holding two messages; a reused msg id
log_gaps                   P5     a read that is not contiguous from its start seq to the head
aborted_read               P7     a definitely failed send (or a never-sent one) that is visible
nonmonotonic_delivery      P6     a session's RECV seqs of a channel repeating or going back
replica_divergence         P10    replicas disagreeing on a channel's (head, hash) after heal
stale_read                 P8     a read begun after an ack that covers its seq but misses it
read_floor_regression      P11    floor/head going back; floor > head; unread > head - floor
availability               P12    (measurement) unavailability and latency around faults
=========================  =====  ==============================================================

Every checker reads ``info`` (and a never-completed invoke) as "maybe happened". A checker that
found nothing to check reports "no data" (:attr:`CheckResult.status`), not "valid"; a property
named in ``required`` that has no data makes the verdict "inconclusive".
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from chaos.history import History

from .availability import FaultWindow, check_availability, fault_windows
from .base import MAX_EXAMPLES, CheckResult, CheckStatus, HistoryLike, send_outcome
from .delivery import check_nonmonotonic_delivery, check_read_floor_regression
from .messages import (
    check_aborted_read,
    check_duplicates,
    check_inconsistent_seq,
    check_log_gaps,
    check_lost_acked,
    check_stale_read,
)
from .replicas import check_replica_divergence, heal_mono

__all__ = [
    "CHECKERS",
    "MAX_EXAMPLES",
    "SAFETY",
    "CheckResult",
    "CheckStatus",
    "FaultWindow",
    "Verdict",
    "VerdictStatus",
    "check_aborted_read",
    "check_all",
    "check_availability",
    "check_duplicates",
    "check_inconsistent_seq",
    "check_log_gaps",
    "check_lost_acked",
    "check_nonmonotonic_delivery",
    "check_read_floor_regression",
    "check_replica_divergence",
    "check_stale_read",
    "fault_windows",
    "heal_mono",
    "send_outcome",
]

CHECKERS: dict[str, Callable[[HistoryLike], CheckResult]] = {
    "lost_acked": check_lost_acked,
    "duplicates": check_duplicates,
    "inconsistent_seq": check_inconsistent_seq,
    "log_gaps": check_log_gaps,
    "aborted_read": check_aborted_read,
    "nonmonotonic_delivery": check_nonmonotonic_delivery,
    "replica_divergence": check_replica_divergence,
    "stale_read": check_stale_read,
    "read_floor_regression": check_read_floor_regression,
    "availability": check_availability,
}


SAFETY: tuple[str, ...] = tuple(name for name in CHECKERS if name != "availability")
"""The safety properties: what a chaos run must have data for before it may call itself valid
(availability is a measurement; a run without faults has nothing to measure)."""

VerdictStatus = Literal["valid", "invalid", "inconclusive"]


@dataclass(slots=True)
class Verdict:
    """``valid`` is True when no checker found a violation and every ``required`` property had
    data; with nothing required (the default) it only says nothing was found broken. ``status``
    tells the three outcomes apart."""

    valid: bool
    results: dict[str, CheckResult]
    required: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()
    """Why the run could not look at everything it should have (set by the runner: final reads
    that kept failing, replicas that never converged). Makes the verdict inconclusive."""

    @property
    def failed(self) -> list[str]:
        return [name for name, r in self.results.items() if not r.valid]

    @property
    def no_data(self) -> list[str]:
        """Every checker that had nothing to check, required or not."""
        return [name for name, r in self.results.items() if r.status == "no data"]

    @property
    def missing(self) -> list[str]:
        """Required properties without data: a missing checker counts as no data."""
        return [
            name
            for name in self.required
            if name not in self.results or self.results[name].status == "no data"
        ]

    @property
    def status(self) -> VerdictStatus:
        if self.failed:
            return "invalid"
        if self.missing or self.unchecked:
            return "inconclusive"
        return "valid" if self.valid else "invalid"

    def to_json(self) -> dict[str, Any]:
        """A plain dict ``json.dumps`` accepts (no inf/NaN, no dataclasses)."""
        return {
            "valid": self.valid,
            "status": self.status,
            "failed": self.failed,
            "no_data": self.no_data,
            "required": list(self.required),
            "missing": self.missing,
            "unchecked": list(self.unchecked),
            "results": {name: r.to_json() for name, r in self.results.items()},
        }


def check_all(
    history: HistoryLike,
    *,
    recovery_bound_s: float | None = None,
    allow_unknown_messages: bool = False,
    required: Collection[str] = (),
    unchecked: Collection[str] = (),
) -> Verdict:
    """Run every checker over one history (paired and indexed once). ``required``: properties
    that must have data for the verdict to be valid (a runner passes :data:`SAFETY`);
    ``unchecked``: reasons the caller could not look at everything (see :class:`Verdict`)."""
    h = History.of(history)
    results: dict[str, CheckResult] = {}
    for name, check in CHECKERS.items():
        if name == "availability":
            results[name] = check_availability(h, recovery_bound_s=recovery_bound_s)
        elif name == "aborted_read":
            results[name] = check_aborted_read(h, allow_unknown=allow_unknown_messages)
        else:
            results[name] = check(h)
    verdict = Verdict(
        valid=False, results=results, required=tuple(required), unchecked=tuple(unchecked)
    )
    verdict.valid = not verdict.failed and not verdict.missing and not verdict.unchecked
    return verdict
