"""A follower's handling of AppendEntries, made to keep Raft's guarantees where pysyncobj
0.3.17 does not.

pysyncobj's follower departs from Raft (§5.3 of the paper) in three ways, each of which lets a
replica's state machine differ from the others' for good, silently:

* **Commit without a consistency check.** Every AppendEntries moves the follower's commit index
  to ``min(leader's commit, end of its own log)``, including the messages of a snapshot
  transfer, which carry no ``prevLogIdx`` and check nothing. A follower with a tail of entries
  from an old term that the new leader never sent (a deposed leader's, or its followers') then
  applies that tail as committed. Leaders send such messages for as long as a transfer's tar is
  being built (``cluster.raft.snapshot``): seconds on a loaded node.
* **Truncation without a conflict.** A message whose ``prevLogIdx`` matches makes the follower
  delete everything after ``prevLogIdx`` before it appends, even entries that agree with the
  message. A message that arrives late (the leader resends after a reset while its earlier
  messages are still on the way) then shortens a log that the leader already counted in its
  match index, applied entries included.
* **Success after a failed snapshot.** A transfer whose load fails (a damaged tar) is answered
  as a success, and the leader counts the follower's unchanged, unchecked log end as matched.
* **A snapshot replaces everything.** A received snapshot clears the whole journal and sets
  the applied index to the snapshot's, even when the replica holds (and applied) entries past
  it, as it does when a leader resets its next index from a late reply. Entries the leader
  counted go, and the state machine then skips the indexes it believes it applied.

``AppendGuard`` stands in front of pysyncobj's handler and keeps to the paper: the commit index
moves only to entries the leader has vouched for (its ``prevLogIdx`` with a matching term, and
the entries after it); entries held with the message's term are kept, and only a conflict
truncates; a received snapshot older than what the replica applied changes nothing, and one
that is newer keeps the journal after it when the journal holds its last entries; a failed
snapshot load is answered with a reset to the commit index, so the leader sends it again. A
conflict at an entry this replica has applied means the state machine has already diverged:
the message is refused with a CRITICAL line, and the replica stays behind (visible as follower
lag) instead of overwriting history it cannot undo.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from cluster.ratelog import RateLimitedLog

from . import pysyncobj_seam as seam

if TYPE_CHECKING:
    from .snapshot import CheckpointTransmitter

log = logging.getLogger("raftchat.raft.follower")
DIVERGED = RateLimitedLog(log, 10.0)

Entry = tuple[bytes, int, int]
"""pysyncobj's log entry: command, index, term."""


class AppendGuard:
    """Per group: the state a snapshot message's handling needs across pysyncobj's calls."""

    def __init__(self, group: Any, label: str) -> None:
        self._g = group
        self._label = label
        self.load_failed = False
        self.snapshot_next: int | None = None
        """The index to answer after a received snapshot (pysyncobj answers its log's end)."""
        self.refused = 0
        """AppendEntries refused because they conflict with applied entries (a divergence)."""

    # --- entry point ------------------------------------------------------------------------

    def on_append_entries(self, node: Any, message: dict[str, Any]) -> None:
        """Handle an AppendEntries of the current term or a newer one (older ones go to
        pysyncobj, which ignores them)."""
        if "prevLogIdx" not in message:
            self._snapshot_message(node, message)
        elif message["prevLogIdx"] is None:
            # pysyncobj's leader sends this when its next index for us is past its own log
            # (set from a reply that named our unchecked end). Start again from what we know
            # it holds: our commit index.
            self._header_only(node, message)
            self._reset_to_commit(node)
        elif message.get("transmission") is not None:
            # An entry too large for one message, in chunks; raftchat's commands never are
            # (``cluster.raft.conf``), so pysyncobj's handling is kept as it is.
            self._pysyncobj(node, message)
        else:
            self._regular(node, message)

    # --- regular AppendEntries ----------------------------------------------------------------

    def _regular(self, node: Any, message: dict[str, Any]) -> None:
        g = self._g
        prev_idx: int = message["prevLogIdx"]
        if prev_idx >= seam.last_log_index(g):
            # The steady state: new entries after this replica's last one (or a gap, which
            # pysyncobj answers with a reset). Nothing to delete; pysyncobj's rules hold.
            self._pysyncobj(node, message)
            return
        entries: list[Entry] = list(message.get("entries", ()))
        ours: list[Entry] = seam.entries_from(g, prev_idx)
        if not ours or ours[0][2] != message["prevLogTerm"]:
            self._pysyncobj(node, message)  # no match at prevLogIdx: pysyncobj asks for a reset
            return
        # Entries this replica already holds with the leader's term are the leader's entries
        # (Log Matching): skip them instead of deleting and appending them again.
        held = 0
        while held < len(entries) and held + 1 < len(ours) and _same(ours[held + 1], entries[held]):
            held += 1
        if held < len(entries):
            conflict = held + 1 < len(ours)
            if conflict and ours[held + 1][1] <= seam.last_applied(g):
                self._refuse(node, message, ours[held + 1], entries[held])
                return
            if held:
                last = entries[held - 1]
                message = {
                    **message,
                    "prevLogIdx": last[1],
                    "prevLogTerm": last[2],
                    "entries": entries[held:],
                }
            # pysyncobj now truncates only at a conflict, and its log ends at the last new
            # entry, so its commit rule (up to the log's end) commits only vouched entries.
            self._pysyncobj(node, message)
            return
        verified = entries[-1] if entries else ours[0]
        if len(ours) == held + 1:
            # The log ends at the last vouched entry: pysyncobj's handling is right as it is
            # (a heartbeat, or entries already held), given no entries to re-append.
            self._pysyncobj(
                node,
                {**message, "prevLogIdx": verified[1], "prevLogTerm": verified[2], "entries": []},
            )
            return
        # The log goes on past what this message vouches for: a late message, or a new leader
        # that has not reached those indexes yet. Nothing to delete (a later entry that
        # conflicts truncates then); the answer and the commit index stop at ``verified``.
        self._header_only(node, message)
        self._commit_up_to(min(int(message["commit_index"]), verified[1]))
        g.answer_leader(node, False, verified[1] + 1, True)  # through the group, as pysyncobj

    def _refuse(self, node: Any, message: dict[str, Any], ours: Entry, theirs: Entry) -> None:
        self.refused += 1
        DIVERGED.log(
            logging.CRITICAL,
            ("diverged", self._label),
            "raft replica diverged: the leader's entry conflicts with one this replica has "
            "applied; refusing it (this replica stays behind: rebuild it from the others)",
            group=self._label,
            index=ours[1],
            applied_term=ours[2],
            leader_term=theirs[2],
            applied=seam.last_applied(self._g),
        )
        self._header_only(node, message)

    # --- snapshot transfer ----------------------------------------------------------------------

    def _snapshot_message(self, node: Any, message: dict[str, Any]) -> None:
        self.load_failed = False
        # A snapshot message vouches for no entry of this replica's log: it must not commit any.
        # (A loaded snapshot holds committed entries only: ``load_received`` commits up to it.)
        self._committing_nothing(node, message)

    def load_received(self, transmitter: CheckpointTransmitter) -> None:
        """Take the snapshot a leader sent (pysyncobj's ``__loadDumpFile`` for a transfer)."""
        g = self._g
        snapshots, incoming = transmitter.snapshots, transmitter.incoming_path
        self.load_failed = True
        try:
            meta, checkpoint = snapshots.unpack(incoming)
        except Exception:
            log.warning("a received snapshot could not be unpacked", exc_info=True)
            incoming.unlink(missing_ok=True)
            return
        index = int(meta["index"])
        if index <= seam.last_applied(g):
            # Older than what this replica applied (a leader that went back on a late reply):
            # nothing to load, and nothing of the log may go. The leader learns where it is.
            snapshots.discard(checkpoint, transmitter.dump_path)
            incoming.unlink(missing_ok=True)
            self.load_failed = False
            self.snapshot_next = seam.commit_index(g) + 1
            return
        try:
            snapshots.install_received(meta, checkpoint)
            os.replace(incoming, transmitter.dump_path)
        except Exception:
            log.exception("installing a received snapshot failed")
            return
        last, before = meta["raft"][0], meta["raft"][1]
        kept = trim_journal_to(g, before, last)
        seam.load_snapshot(g, not kept)
        if seam.last_applied(g) == index:
            self.load_failed = False
            self.snapshot_next = index + 1
            self._commit_up_to(index)

    def answer(self, node: Any, reset: bool, next_idx: Any, success: bool) -> None:
        """pysyncobj's reply to the leader. After a received snapshot: the index after it (not
        the log's end, which may hold unchecked entries), or, if it failed to load, a reset to
        the commit index, so that the leader sends it again."""
        snapshot_next, self.snapshot_next = self.snapshot_next, None
        if success and self.load_failed:
            self.load_failed = False
            log.warning("a received snapshot could not be loaded; asking the leader again")
            self._reset_to_commit(node)
            return
        if success and next_idx is None and snapshot_next is not None:
            next_idx = snapshot_next
        seam.answer_leader(self._g, node, reset=reset, next_index=next_idx, success=success)

    def _reset_to_commit(self, node: Any) -> None:
        # Committed entries are the leader's too (Leader Completeness): the safe place to go on.
        commit = seam.commit_index(self._g)
        seam.answer_leader(self._g, node, reset=True, next_index=commit + 1, success=False)

    # --- pysyncobj --------------------------------------------------------------------------

    def _pysyncobj(self, node: Any, message: dict[str, Any]) -> None:
        seam.handle_message(self._g, node, message)

    def _header_only(self, node: Any, message: dict[str, Any]) -> None:
        """What every AppendEntries of a current leader does (term, leader, election timer,
        follower state), and nothing to the log or the commit index."""
        header = {
            k: v
            for k, v in message.items()
            if k not in ("prevLogIdx", "prevLogTerm", "entries", "serialized", "transmission")
        }
        self._committing_nothing(node, header)

    def _committing_nothing(self, node: Any, message: dict[str, Any]) -> None:
        """pysyncobj's handling of ``message`` with this replica's own commit index in it, so
        that none moves; the leader's commit index is still recorded (readiness reads it)."""
        g = self._g
        self._pysyncobj(node, {**message, "commit_index": seam.commit_index(g)})
        seam.set_leader_commit_index(g, message["commit_index"])

    def _commit_up_to(self, index: int) -> None:
        g = self._g
        if index > seam.commit_index(g):
            seam.set_commit_index(g, index)


def _same(ours: Entry, theirs: Entry) -> bool:
    """The same entry: Raft's Log Matching says index and term are enough."""
    return ours[1] == theirs[1] and ours[2] == theirs[2]


def trim_journal_to(group: Any, before: Any, last: Any) -> bool:
    """Make the journal start at a snapshot's two last entries, ``before`` and ``last``, if it
    holds both, keeping every entry after them (what pysyncobj's compaction does one tick after
    it writes a snapshot); True when the journal starts with them."""
    journal = seam.journal(group)
    if len(journal) < 2:
        return False
    if _same_full(journal[0], before) and _same_full(journal[1], last):
        return True
    at = int(before[1]) - int(journal[0][1])
    holds_both = (
        0 < at < len(journal) - 1
        and _same_full(journal[at], before)
        and _same_full(journal[at + 1], last)
    )
    if holds_both:
        journal.deleteEntriesTo(at)
    return holds_both


def _same_full(a: Any, b: Any) -> bool:
    return _same(a, b) and bytes(a[0]) == bytes(b[0])
