"""The backup directory's format: ``manifest.json`` plus ``g<N>/<file>`` for every group's
checkpoint (``docs/operations.md``, "Backup and restore").

The manifest names the cluster, the controller's map, and for every group the Raft index and
term of its checkpoint and each file's size and SHA-256; a checksum over the rest of the
manifest catches a damaged manifest. ``raftchat backup`` writes it last, so a directory without
one is an unfinished backup.

Whoever reads a backup treats it as untrusted input (it may have been damaged, cut short or
forged on its way): ``load`` checks every field, accepts only plain file names, and ``check_file``
compares sizes and digests before anything is restored from it. Every refusal is a
``BackupInvalid`` whose message is the one line the operator sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.placement import HASH_SLOTS, Placement, from_json

from .safejson import JsonRefused
from .safejson import loads as safe_loads

MANIFEST = "manifest.json"
FORMAT = "raftchat-backup"
VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILES_PER_GROUP = 100_000
MAX_FILE_BYTES = 1 << 40
MAX_GROUPS = 4096
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BLOCK = 1024 * 1024


class BackupInvalid(Exception):
    """The backup cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class BackupFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class GroupCheckpoint:
    group: int
    index: int
    """The Raft index of the last command whose effects the checkpoint holds."""
    term: int
    """The leader's term when the checkpoint was taken."""
    node_id: int
    files: tuple[BackupFile, ...]


@dataclass(frozen=True)
class Manifest:
    cluster_id: str
    created_unix_ms: int
    placement: Placement
    groups: dict[int, GroupCheckpoint]
    raw: dict[str, Any]

    def group_dir(self, root: Path, group: int) -> Path:
        return root / group_dir_name(group)


def valid_name(name: str) -> bool:
    """A plain file name (what RocksDB writes into a checkpoint), never a path."""
    return bool(_NAME.fullmatch(name))


def group_dir_name(group: int) -> str:
    return f"g{group}"


def checksum(doc: dict[str, Any]) -> str:
    """SHA-256 of the manifest without its ``checksum`` field, in canonical JSON."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write(root: Path, doc: dict[str, Any]) -> None:
    """Write the manifest (with its checksum) atomically and durably: the last step of a
    backup."""
    doc = {**doc, "format": FORMAT, "version": VERSION}
    doc["checksum"] = checksum(doc)
    tmp = root / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(root: Path) -> Manifest:
    """Read and check ``root``'s manifest (not yet the files: ``check_file``)."""
    path = root / MANIFEST
    raw = _read_small(path)
    try:
        doc = safe_loads(raw, 16)
    except (JsonRefused, ValueError) as e:
        raise BackupInvalid(f"{path} is damaged: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupInvalid(f"{path} is not a raftchat backup manifest")
    if doc.get("version") != VERSION:
        raise BackupInvalid(
            f"{path} has format version {doc.get('version')!r}; this raftchat reads {VERSION}"
        )
    if doc.get("checksum") != checksum(doc):
        raise BackupInvalid(f"{path} is damaged: its checksum does not match its content")
    try:
        return _parse(doc)
    except (KeyError, TypeError, ValueError) as e:
        raise BackupInvalid(f"{path} is damaged: {e}") from None


def check_file(root: Path, group: int, f: BackupFile, copy_to: Path | None = None) -> None:
    """Check one file of the backup against the manifest (a regular file of the stated size
    and digest), copying it to ``copy_to`` as it is read when given: what is copied is what
    was checked. Raises ``BackupInvalid``; a partial copy is the caller's to remove."""
    where = root / group_dir_name(group)
    path = where / f.name
    for p in (where, path):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            raise BackupInvalid(f"the backup is incomplete: {p} is missing") from None
        wanted = stat.S_ISDIR if p is where else stat.S_ISREG
        if not wanted(st.st_mode):
            kind = "directory" if p is where else "regular file"
            raise BackupInvalid(f"the backup is damaged: {p} is not a {kind}")
    if st.st_size != f.size:
        raise BackupInvalid(
            f"the backup is damaged: {path} has {st.st_size} bytes, the manifest says {f.size}"
        )
    digest = hashlib.sha256()
    seen = 0
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags), "rb") as src:
        out = None if copy_to is None else open(copy_to, "xb")  # noqa: SIM115 - closed below
        try:
            while seen <= f.size and (block := src.read(_BLOCK)):
                digest.update(block)
                seen += len(block)
                if out is not None:
                    out.write(block)
            if out is not None:
                out.flush()
                os.fsync(out.fileno())
        finally:
            if out is not None:
                out.close()
    if seen != f.size or digest.hexdigest() != f.sha256:
        raise BackupInvalid(f"the backup is damaged: {path} does not match its checksum")


def _read_small(path: Path) -> bytes:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BackupInvalid(
            f"{path} is missing: not a backup directory, or a backup that did not finish"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise BackupInvalid(f"{path} is not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise BackupInvalid(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes: not a manifest")
    with open(path, "rb") as f:
        return f.read(MAX_MANIFEST_BYTES + 1)


def _int(value: Any, what: str, low: int = 0, high: int = (1 << 63) - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}], got {value!r}"[:200])
    return value


def _str(value: Any, what: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise ValueError(f"{what} is not valid: {value!r}"[:200])
    return value


def _parse(doc: dict[str, Any]) -> Manifest:
    cluster_id = _str(doc["cluster_id"], "cluster_id")
    created = _int(doc["created_unix_ms"], "created_unix_ms")
    placement = _placement(doc["placement"])
    group_count = len(placement.groups)
    entries = doc["groups"]
    if not isinstance(entries, list) or len(entries) > MAX_GROUPS:
        raise ValueError("groups must be a list")
    groups: dict[int, GroupCheckpoint] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("a group entry is not an object")
        g = _int(entry["group"], "group", 0, group_count)
        if g in groups:
            raise ValueError(f"group {g} is listed twice")
        files = entry["files"]
        if not isinstance(files, list) or len(files) > MAX_FILES_PER_GROUP:
            raise ValueError(f"the files of group {g} must be a list")
        parsed = []
        names = set()
        for item in files:
            if not isinstance(item, dict):
                raise ValueError(f"a file entry of group {g} is not an object")
            name = _str(item["name"], f"a file name of group {g}", _NAME)
            if name in names or name in (".", ".."):
                raise ValueError(f"file {name} of group {g} is listed twice")
            names.add(name)
            size = _int(item["size"], f"the size of g{g}/{name}", 0, MAX_FILE_BYTES)
            digest = _str(item["sha256"], f"the sha256 of g{g}/{name}", _SHA256)
            parsed.append(BackupFile(name, size, digest))
        groups[g] = GroupCheckpoint(
            g,
            _int(entry["index"], f"the index of group {g}"),
            _int(entry["term"], f"the term of group {g}"),
            _int(entry["node_id"], f"the node of group {g}", 1, 1023),
            tuple(parsed),
        )
    missing = sorted(set(range(group_count + 1)) - set(groups))
    if missing:
        raise BackupInvalid(
            "the backup is incomplete: no checkpoint of group(s) "
            + ", ".join(str(g) for g in missing)
        )
    return Manifest(cluster_id, created, placement, groups, doc)


def _placement(value: Any) -> Placement:
    if not isinstance(value, dict):
        raise ValueError("placement must be an object")
    try:
        placement = from_json(value)
    except (AssertionError, AttributeError) as e:
        raise ValueError(f"placement is not a cluster map ({type(e).__name__})") from None
    count = len(placement.groups)
    if not 1 <= count <= MAX_GROUPS or sorted(placement.groups) != list(range(1, count + 1)):
        raise ValueError("placement must list groups 1..N")
    table = placement.slot_table
    if len(table) != HASH_SLOTS or any(not 1 <= g <= count for g in table):
        raise ValueError(f"the slot table must map {HASH_SLOTS} slots onto groups 1..{count}")
    return placement
