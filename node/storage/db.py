"""The node's RocksDB (via rocksdict, raw mode).

Writes go with ``sync=False`` (the WAL stays on) and durability comes from ``flush_wal(True)``,
which callers run in a worker thread once per batch: a synchronous rocksdict write would hold
the GIL for the whole fsync and stall every other task of the process (stack findings §3).
"""

from __future__ import annotations

import gc
import os
import shutil
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rocksdict import (
    Checkpoint,
    DBCompressionType,
    Options,
    Rdict,
    ReadOptions,
    SliceTransform,
    WriteBatch,
    WriteOptions,
)

from . import keys
from .records import ChannelInfo, DeviceRecord, MessageRecord

_CFS = (
    "messages",
    "channels",
    "subscribers",
    "users",
    "dedupe",
    "state",
    # The messaging product's state; key layouts live with the modules that own them
    # (node/groups/*).
    "lists",  # channel deny/allow lists
    "convs",  # per-user conversation rows
    "msgx",  # per-message extras: revocations, edits, per-user hides, read receipts
    "cmdq",  # per-user command (sync_once) queues and per-device cursors
)
_DEDUPE = struct.Struct(">qQ")
_INFO = b"I"
_HEAD = b"H"
_APPLIED = b"applied_index"
_LAST_ID = b"last_message_id"


class StoreError(Exception):
    """A storage invariant does not hold (for example a channel-key collision)."""


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        # Guards swapping the database under readers when a snapshot is installed; RocksDB
        # itself is safe for concurrent readers and writers.
        self._lock = threading.RLock()
        # Held through an fsync, which runs without ``_lock`` so that readers are not held up.
        self._flush_lock = threading.Lock()
        # Held through a memtable flush ahead of a checkpoint, which also runs without
        # ``_lock``: only closing (and installing) the database waits for it.
        self._swap_lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        Path(self.path).mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        opts.set_compression_type(DBCompressionType.lz4())
        prefixed = Options(raw_mode=True)
        prefixed.set_prefix_extractor(SliceTransform.create_fixed_prefix(keys.CHANNEL_KEY_LEN))
        prefixed.set_memtable_prefix_bloom_ratio(0.1)
        cf_opts = {name: Options(raw_mode=True) for name in _CFS}
        cf_opts["messages"] = prefixed
        self._db = Rdict(self.path, opts, column_families=cf_opts)
        self._cf = {name: self._db.get_column_family(name) for name in _CFS}
        self._h = {name: self._db.get_column_family_handle(name) for name in _CFS}
        self._wo = WriteOptions()
        self._wo.sync = False

    # --- lifecycle ------------------------------------------------------------------------

    def flush_wal(self) -> None:
        """fsync the WAL: everything written before is durable after this returns. A closed
        store (a replica dropped from this node) has nothing left to make durable here."""
        with self._flush_lock:
            with self._lock:
                db = getattr(self, "_db", None)
            if db is not None:
                db.flush_wal(True)

    def close(self, collect: bool = True) -> None:
        """``collect=False`` leaves the LOCK file to the next garbage collection (a node
        closing all its stores at once collects once, not once per store: ~0.1 s each)."""
        # Not under a running fsync or flush on another thread (the commit flusher's).
        with self._swap_lock, self._flush_lock, self._lock:
            self._close(collect)

    def _close(self, collect: bool = True) -> None:
        # rocksdict keeps the LOCK while any column-family handle lives; drop them all first
        # so that the same process can reopen the directory (restart-in-place tests).
        self._cf.clear()
        self._h.clear()
        self._db.close()
        del self._db
        if collect:
            gc.collect()

    def checkpoint(self, path: str) -> None:
        """A consistent copy of the database in a new directory (hard links where possible):
        Raft's log-compaction snapshots, which stop the node no longer than backups do."""
        self.checkpoint_at(path)

    def checkpoint_at(self, path: str) -> int:
        """``checkpoint``, and the applied index of exactly the data it holds (every apply
        writes under the same lock, so none lands between the two).

        The memtables are flushed first, without the lock (rocksdict releases the GIL for a
        flush but holds it through ``create_checkpoint``): the checkpoint then flushes only
        what was written meanwhile, and stops the other threads for a fraction of the time
        (ADR "backup and restore", ``bench/checkpoint_stall.py``)."""
        with self._swap_lock:
            with self._lock:
                families = list(self._cf.values())
            for family in families:
                family.flush(True)
        with self._lock:
            applied = self.applied_index()
            Checkpoint(self._db).create_checkpoint(path)
        return applied

    def install(self, checkpoint: str) -> None:
        """Replace the whole database by a checkpoint (a snapshot from the group's leader)."""
        with self._swap_lock, self._flush_lock, self._lock:
            self._close()
            staging = f"{self.path}.installing"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(checkpoint, staging)
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(staging, self.path)
            self._open()

    # --- replication state ----------------------------------------------------------------

    def applied_index(self) -> int:
        with self._lock:
            raw = self._cf["state"].get(_APPLIED)
        return 0 if raw is None else keys.unpack_seq(raw)

    def get_state(self, key: bytes) -> bytes | None:
        with self._lock:
            raw = self._cf["state"].get(key)
        return None if raw is None else bytes(raw)

    def last_message_id(self) -> int:
        with self._lock:
            raw = self._cf["state"].get(_LAST_ID)
        return 0 if raw is None else int(struct.unpack(">q", raw)[0])

    # --- writes ---------------------------------------------------------------------------

    def batch(self) -> Batch:
        return Batch(self)

    def write(self, batch: Batch) -> None:
        with self._lock:
            self._db.write(batch.wb, self._wo)

    # --- channels -------------------------------------------------------------------------

    def get_channel(self, channel_type: int, channel_id: str) -> ChannelInfo | None:
        with self._lock:
            raw = self._cf["channels"].get(_INFO + keys.channel_key(channel_type, channel_id))
        if raw is None:
            return None
        info = ChannelInfo.decode(raw)
        if info.channel_id != channel_id or info.channel_type != channel_type:
            raise StoreError(
                f"channel key collision: {channel_type}:{channel_id} vs "
                f"{info.channel_type}:{info.channel_id}"
            )
        return info

    def head_seq(self, channel_type: int, channel_id: str) -> int:
        with self._lock:
            raw = self._cf["channels"].get(_HEAD + keys.channel_key(channel_type, channel_id))
        return 0 if raw is None else keys.unpack_seq(raw)

    def is_subscriber(self, channel_type: int, channel_id: str, uid: str) -> bool:
        ck = keys.channel_key(channel_type, channel_id)
        with self._lock:
            return self._cf["subscribers"].get(keys.subscriber_key(ck, uid)) is not None

    def subscribers(self, channel_type: int, channel_id: str) -> list[str]:
        ck = keys.channel_key(channel_type, channel_id)
        with self._lock:
            return [k[len(ck) :].decode() for k, _ in self._prefix(self._cf["subscribers"], ck)]

    # --- messages -------------------------------------------------------------------------

    def get_dedupe(
        self, channel_type: int, channel_id: str, from_uid: str, client_msg_no: str
    ) -> tuple[int, int] | None:
        ck = keys.channel_key(channel_type, channel_id)
        with self._lock:
            raw = self._cf["dedupe"].get(keys.dedupe_key(ck, from_uid, client_msg_no))
        if raw is None:
            return None
        mid, seq = _DEDUPE.unpack(raw)
        return int(mid), int(seq)

    def get_message(self, channel_type: int, channel_id: str, seq: int) -> MessageRecord | None:
        ck = keys.channel_key(channel_type, channel_id)
        with self._lock:
            raw = self._cf["messages"].get(keys.message_key(ck, seq))
        return None if raw is None else MessageRecord.decode(raw)

    def messages(
        self, channel_type: int, channel_id: str, start_seq: int, end_seq: int, limit: int
    ) -> list[MessageRecord]:
        """Messages with ``start_seq <= seq < end_seq`` (``end_seq`` 0 = no bound), oldest first."""
        ck = keys.channel_key(channel_type, channel_id)
        ro = ReadOptions()
        ro.set_iterate_lower_bound(keys.message_key(ck, max(start_seq, 0)))
        upper = keys.message_key(ck, end_seq) if end_seq else _prefix_end(ck)
        ro.set_iterate_upper_bound(upper)
        out: list[MessageRecord] = []
        with self._lock:
            it = self._cf["messages"].iter(ro)
            it.seek(keys.message_key(ck, max(start_seq, 0)))
            while it.valid() and len(out) < limit:
                out.append(MessageRecord.decode(it.value()))
                it.next()
            del it
        return out

    def scan_messages(self, visit: Callable[[MessageRecord], None]) -> int:
        """Call ``visit`` on every stored message, channel after channel (in channel-key order)
        and by seq within a channel; return the applied index of exactly the data visited.

        The lock is held throughout: every write takes it, so no apply lands mid-scan, and a
        snapshot install cannot close the database under the iterator. The price is that this
        group's applies (and with them the node's Raft driver) wait for the scan: keep
        ``visit`` cheap; this is for operators and tests, not a hot path."""
        ro = ReadOptions()
        ro.set_total_order_seek(True)  # one pass over every channel, past the prefix extractor
        with self._lock:
            applied = self.applied_index()
            it = self._cf["messages"].iter(ro)
            it.seek_to_first()
            while it.valid():
                visit(MessageRecord.decode(it.value()))
                it.next()
            del it
        return applied

    # --- generic access for the domain modules (node/groups/*) -----------------------------

    def get_raw(self, cf: str, key: bytes) -> bytes | None:
        with self._lock:
            raw = self._cf[cf].get(key)
        return None if raw is None else bytes(raw)

    def prefix_items(
        self, cf: str, prefix: bytes, limit: int | None = None, start: bytes = b""
    ) -> list[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with ``prefix``, in key order; with ``start``,
        only those from that key on (a page that resumes)."""
        out: list[tuple[bytes, bytes]] = []
        with self._lock:
            for k, v in self._prefix(self._cf[cf], prefix, max(start, prefix)):
                out.append((bytes(k), bytes(v)))
                if limit is not None and len(out) >= limit:
                    break
        return out

    # --- users ----------------------------------------------------------------------------

    def get_device(self, uid: str, device_flag: int) -> DeviceRecord | None:
        with self._lock:
            raw = self._cf["users"].get(keys.device_key(uid, device_flag))
        return None if raw is None else DeviceRecord.decode(raw)

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _prefix(
        cf: Any, prefix: bytes, start: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        ro = ReadOptions()
        ro.set_iterate_lower_bound(prefix)
        ro.set_iterate_upper_bound(_prefix_end(prefix))
        it = cf.iter(ro)
        it.seek(start or prefix)
        while it.valid():
            yield it.key(), it.value()
            it.next()
        del it


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with ``prefix``."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b"\xff" * (len(prefix) + 1)
    b[-1] += 1
    return bytes(b)


class Batch:
    """One atomic RocksDB write. Build it, then ``Store.write`` it."""

    __slots__ = ("_store", "wb")

    def __init__(self, store: Store) -> None:
        self._store = store
        self.wb = WriteBatch(raw_mode=True)

    def _put(self, cf: str, key: bytes, value: bytes) -> None:
        self.wb.put(key, value, self._store._h[cf])

    def _delete(self, cf: str, key: bytes) -> None:
        self.wb.delete(key, self._store._h[cf])

    def put_raw(self, cf: str, key: bytes, value: bytes) -> None:
        self._put(cf, key, value)

    def delete_raw(self, cf: str, key: bytes) -> None:
        self._delete(cf, key)

    def put_channel(self, info: ChannelInfo) -> None:
        ck = keys.channel_key(info.channel_type, info.channel_id)
        self._put("channels", _INFO + ck, info.encode())

    def delete_channel(self, channel_type: int, channel_id: str) -> None:
        """Drop the channel's row (not its messages or head seq)."""
        self._delete("channels", _INFO + keys.channel_key(channel_type, channel_id))

    def add_subscribers(self, channel_type: int, channel_id: str, uids: Iterable[str]) -> None:
        ck = keys.channel_key(channel_type, channel_id)
        for uid in uids:
            self._put("subscribers", keys.subscriber_key(ck, uid), b"")

    def remove_subscribers(self, channel_type: int, channel_id: str, uids: Iterable[str]) -> None:
        ck = keys.channel_key(channel_type, channel_id)
        for uid in uids:
            self._delete("subscribers", keys.subscriber_key(ck, uid))

    def append_message(self, msg: MessageRecord) -> None:
        """Store a message, move the channel head to it and record its dedupe key."""
        ck = keys.channel_key(msg.channel_type, msg.channel_id)
        self._put("messages", keys.message_key(ck, msg.message_seq), msg.encode())
        self._put("channels", _HEAD + ck, keys.pack_seq(msg.message_seq))
        if msg.client_msg_no:
            self._put(
                "dedupe",
                keys.dedupe_key(ck, msg.from_uid, msg.client_msg_no),
                _DEDUPE.pack(msg.message_id, msg.message_seq),
            )

    def put_device(self, uid: str, device_flag: int, record: DeviceRecord) -> None:
        self._put("users", keys.device_key(uid, device_flag), record.encode())

    def put_state(self, key: bytes, value: bytes) -> None:
        self._put("state", key, value)

    def set_applied(self, index: int) -> None:
        self._put("state", _APPLIED, keys.pack_seq(index))

    def set_last_message_id(self, message_id: int) -> None:
        self._put("state", _LAST_ID, struct.pack(">q", message_id))
