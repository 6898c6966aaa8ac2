"""The node's side of an online backup (``docs/operations.md``, "Backup and restore"): a
RocksDB checkpoint of one replica at a known applied Raft index, kept under
``<data_dir>/backups`` while a backup client reads it in bounded chunks over the admin API.

A checkpoint is taken on the group's leader right after a read barrier, so it holds every
command committed before the request arrived; the store's lock makes the checkpoint and its
applied index one consistent cut. Checkpoints are hard links to the store's files (plus one
memtable flush), so taking one costs little disk and time; they are deleted when the client
releases them, when they have been idle for ``IDLE_TTL_S``, and when the node starts.

Every input is checked against what this module made: a checkpoint id is a random token it
handed out, a file name one of that checkpoint's own (never a path), an offset a number inside
the file. Nothing outside ``<data_dir>/backups`` can be named, and an answer holds at most
``CHUNK_BYTES``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

BACKUPS_DIR = "backups"
CHUNK_BYTES = 1024 * 1024
"""The most one read answers: a client pages through a file, and neither side ever holds more
of it in memory."""
IDLE_TTL_S = 600.0
"""A checkpoint nobody read or released for this long is deleted (a client that died)."""
MAX_OPEN = 4
"""Checkpoints a node keeps at once: a backup reads one group at a time, so more means
forgotten ones, and each pins files that compaction would otherwise delete."""
_ID = re.compile(r"[0-9a-f]{32}")
_HASH_BLOCK = 1024 * 1024


class BackupRefused(Exception):
    """A request this node will not serve as asked: ``status`` is the HTTP status."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status


class CheckpointStore(Protocol):
    def checkpoint_at(self, path: str) -> int: ...


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass
class Checkpoint:
    id: str
    group: int
    index: int
    term: int
    directory: Path
    files: dict[str, FileEntry]
    used: float = field(default_factory=time.monotonic)


class BackupCheckpoints:
    """The checkpoints this node holds for backup clients (one registry per node)."""

    def __init__(self, data_dir: Path, cluster_id: str | None) -> None:
        self.root = data_dir / BACKUPS_DIR
        self.cluster_id = cluster_id
        # Leftovers of an earlier process (it died mid-backup): nobody can name them any more.
        shutil.rmtree(self.root, ignore_errors=True)
        self._open: dict[str, Checkpoint] = {}

    def reserve(self) -> str:
        """A new checkpoint id, refused while ``MAX_OPEN`` are held (after expiring idle ones).
        Called on the event loop before the slow part, so that concurrent requests count."""
        self.expire()
        if len(self._open) >= MAX_OPEN:
            raise BackupRefused(
                429,
                f"this node already holds {MAX_OPEN} backup checkpoints: release them "
                f"(POST /cluster/backup/release) or wait {IDLE_TTL_S:g} s for them to expire",
            )
        backup_id = secrets.token_hex(16)
        # A placeholder, so that the count holds while the checkpoint is being written.
        self._open[backup_id] = Checkpoint(backup_id, -1, 0, 0, self.root / backup_id, {})
        return backup_id

    def take(self, backup_id: str, group: int, term: int, store: CheckpointStore) -> Checkpoint:
        """Write the checkpoint of a reserved id and list its files (blocking: a worker
        thread's job). On failure the reservation is gone and nothing stays on disk."""
        directory = self.root / backup_id
        try:
            self.root.mkdir(mode=0o700, exist_ok=True)
            index = store.checkpoint_at(str(directory))
            files = {e.name: e for e in _list_files(directory)}
        except BaseException:
            self._forget(backup_id)
            raise
        taken = Checkpoint(backup_id, group, index, term, directory, files)
        if backup_id in self._open:
            self._open[backup_id] = taken
        else:  # released while it was being written
            shutil.rmtree(directory, ignore_errors=True)
            raise BackupRefused(409, "the checkpoint was released while it was taken")
        return taken

    def abandon(self, backup_id: str) -> None:
        """Give up a reservation whose checkpoint was never written."""
        self._forget(backup_id)

    def find(self, backup_id: str, name: str) -> tuple[Path, FileEntry]:
        """The file ``name`` of checkpoint ``backup_id``; refused unless both are ours."""
        if not _ID.fullmatch(backup_id):
            raise BackupRefused(400, "id must be the 32 hexadecimal digits a checkpoint answered")
        found = self._open.get(backup_id)
        if found is None or found.group < 0:
            raise BackupRefused(404, f"no backup checkpoint {backup_id} on this node")
        entry = found.files.get(name)
        if entry is None:
            raise BackupRefused(404, f"checkpoint {backup_id} has no file {name[:100]!r}")
        found.used = time.monotonic()
        return found.directory / entry.name, entry

    def release(self, backup_id: str) -> bool:
        if not _ID.fullmatch(backup_id):
            raise BackupRefused(400, "id must be the 32 hexadecimal digits a checkpoint answered")
        return self._forget(backup_id)

    def expire(self) -> None:
        now = time.monotonic()
        for backup_id, cp in list(self._open.items()):
            if cp.group >= 0 and now - cp.used > IDLE_TTL_S:
                self._forget(backup_id)

    def held(self) -> int:
        return len(self._open)

    def _forget(self, backup_id: str) -> bool:
        cp = self._open.pop(backup_id, None)
        if cp is None:
            return False
        shutil.rmtree(cp.directory, ignore_errors=True)
        return True


def read_chunk(path: Path, entry: FileEntry, offset: int) -> bytes:
    """At most ``CHUNK_BYTES`` of a checkpoint file from ``offset`` (blocking)."""
    if offset > entry.size:
        raise BackupRefused(416, f"offset {offset} is past the file's {entry.size} bytes")
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(min(CHUNK_BYTES, entry.size - offset))


def _list_files(directory: Path) -> list[FileEntry]:
    """A checkpoint's files with their sizes and SHA-256 digests. RocksDB writes a flat
    directory; anything else (a subdirectory, a link) is not a checkpoint we can ship."""
    out = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.is_symlink():
            raise OSError(f"unexpected entry {path.name} in checkpoint {directory}")
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
        out.append(FileEntry(path.name, size, digest.hexdigest()))
    return out
