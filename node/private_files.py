"""The umask of every raftchat command that writes a node's data."""

from __future__ import annotations

PRIVATE_UMASK = 0o077
"""Every file and directory the node makes (RocksDB, Raft journals, snapshots, its secret) is
its own alone: 0600 and 0700, whatever the caller's umask. ``raftchat backup`` and
``raftchat restore`` write the same data and use it too."""
