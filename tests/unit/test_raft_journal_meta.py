"""An unchanged commit index does not rewrite a group's journal meta file."""

from __future__ import annotations

import os
from pathlib import Path

from pysyncobj.journal import FileJournal

from cluster.raft.pysyncobj_seam import store_commit_index_on_change


def _meta_inode(path: Path) -> int:
    return os.stat(str(path) + ".meta").st_ino  # each rewrite renames a new file into place


def test_a_heartbeat_with_the_same_commit_index_does_not_rewrite_the_meta_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal"
    journal = FileJournal(str(path))
    try:
        store_commit_index_on_change(journal)
        journal.setRaftCommitIndex(5)
        journal.onOneSecondTimer()
        written = _meta_inode(path)
        journal.setRaftCommitIndex(5)  # what every AppendEntries to a follower does
        journal.onOneSecondTimer()
        assert _meta_inode(path) == written
        journal.setRaftCommitIndex(6)
        journal.onOneSecondTimer()
        assert _meta_inode(path) != written
    finally:
        journal._destroy()


def test_the_stored_commit_index_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = FileJournal(str(path))
    store_commit_index_on_change(journal)
    journal.setRaftCommitIndex(7)
    journal.onOneSecondTimer()
    journal._destroy()
    reopened = FileJournal(str(path))
    try:
        assert reopened.getRaftCommitIndex() == 7
    finally:
        reopened._destroy()
