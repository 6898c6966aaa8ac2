"""Which replicas this node dropped, so that a restart does not bring them back empty.

When a replica moves away, the controller records the move in the cluster map and then tells
the old node to drop its data. If that node dies before its own copy of the map has the move,
it restarts with a map that still lists it, and would open the group again: empty, under the
map's old member list. An empty voter grants its vote to any candidate, so with one lagging
replica it can elect a leader that lacks committed entries, and acknowledged messages are lost.

So a drop leaves a marker (``groups/g<N>.dropped``, written and synced before the data goes),
and at start a node does not open a group whose data it dropped: only the controller brings it
back (``host_group``, when it adds the node to the group again), which removes the marker.
"""

from __future__ import annotations

import os
from pathlib import Path


def marker(data_dir: Path, group: int) -> Path:
    return data_dir / "groups" / f"g{group}.dropped"


def mark_dropped(data_dir: Path, group: int) -> None:
    """Before deleting the replica's data: the marker, durable (a crash after this point must
    not leave the data gone and the marker missing)."""
    path = marker(data_dir, group)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _sync_dir(path.parent)


def clear_dropped(data_dir: Path, group: int) -> None:
    """The controller hosts the group here again (its data directory exists by now)."""
    path = marker(data_dir, group)
    if path.exists():
        path.unlink()
        _sync_dir(path.parent)


def to_open(data_dir: Path, listed: list[int]) -> list[int]:
    """The groups of ``listed`` (those the stored map gives this node) to open at start: all
    but those whose data this node dropped and which the controller has not brought back."""
    return [g for g in listed if not marker(data_dir, g).exists()]


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
