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
read_floor_regression      P11    read floors or heads going back; floor/unread above head
availability               P12    (measurement) unavailability and latency around faults
=========================  =====  ==============================================================

Every checker reads ``info`` (and a never-completed invoke) as "maybe happened".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chaos.history import History

from .availability import FaultWindow, check_availability, fault_windows
from .base import MAX_EXAMPLES, CheckResult, HistoryLike, send_outcome
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
    "CheckResult",
    "FaultWindow",
    "Verdict",
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


@dataclass(slots=True)
class Verdict:
    valid: bool
    results: dict[str, CheckResult]

    @property
    def failed(self) -> list[str]:
        return [name for name, r in self.results.items() if not r.valid]

    def to_json(self) -> dict[str, Any]:
        """A plain dict ``json.dumps`` accepts (no inf/NaN, no dataclasses)."""
        return {
            "valid": self.valid,
            "failed": self.failed,
            "results": {name: r.to_json() for name, r in self.results.items()},
        }


def check_all(
    history: HistoryLike,
    *,
    recovery_bound_s: float | None = None,
    allow_unknown_messages: bool = False,
) -> Verdict:
    """Run every checker over one history (paired and indexed once)."""
    h = History.of(history)
    results: dict[str, CheckResult] = {}
    for name, check in CHECKERS.items():
        if name == "availability":
            results[name] = check_availability(h, recovery_bound_s=recovery_bound_s)
        elif name == "aborted_read":
            results[name] = check_aborted_read(h, allow_unknown=allow_unknown_messages)
        else:
            results[name] = check(h)
    return Verdict(valid=all(r.valid for r in results.values()), results=results)
