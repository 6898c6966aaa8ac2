"""Deliberate server bugs, for tests only: the chaos suite runs a cluster that has one to prove
that its checkers catch real bugs (a checker that never fails proves nothing).

``testing.sabotage`` picks one; a node refuses to start with any unless the environment has
``RAFTCHAT_ALLOW_SABOTAGE=1``, and logs a warning at start-up when one is active. Never in
production: each one loses or duplicates acknowledged messages on purpose.

* ``ack-without-commit``: a slot-group leader answers every ``FAKE_ACK_EVERY``-th send that
  reaches it (counted per node) with a success that looks real but never proposes it to Raft;
* ``skip-dedupe``: the state machine ignores dedupe records, so a retried ``client_msg_no`` is
  stored again under a new seq. Set it on every node, or replicas also diverge.
"""

from __future__ import annotations

ACK_WITHOUT_COMMIT = "ack-without-commit"
SKIP_DEDUPE = "skip-dedupe"
MODES = (ACK_WITHOUT_COMMIT, SKIP_DEDUPE)
ALLOW_ENV = "RAFTCHAT_ALLOW_SABOTAGE"
FAKE_ACK_EVERY = 10


class AckCounter:
    """Counts the sends reaching this node's slot-group leaders (one counter per node, shared
    by its pipelines) and says which are to be acknowledged without a commit."""

    def __init__(self, every: int = FAKE_ACK_EVERY) -> None:
        self.every = every
        self.sends = 0
        self.faked = 0

    def due(self) -> bool:
        self.sends += 1
        if self.sends % self.every:
            return False
        self.faked += 1
        return True
