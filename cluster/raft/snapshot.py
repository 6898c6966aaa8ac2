"""Snapshots of a group's state as RocksDB checkpoints, never as pickles of the data.

pysyncobj compacts its log by calling our serializer with the Raft metadata of the last applied
entry. We take a checkpoint of the state machine (hard links: cheap) and write a small metadata
file that names it; that is the local snapshot. Only when a follower is behind the compacted log
does the leader need to ship a snapshot: then a tar of the metadata and the checkpoint is built
in a background thread and streamed through pysyncobj's chunked transmission. The follower's
deserializer unpacks it and installs the checkpoint when its own state is older.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import shutil
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pysyncobj.serializer import Serializer

from . import pysyncobj_seam as seam

if TYPE_CHECKING:
    from .group import ReplicatedGroup, StateMachine

log = logging.getLogger("raftchat.raft.snapshot")

META_MAGIC = b"RAFTCHAT-SNAPSHOT-1\n"
TAR_MAGIC_OFFSET = 257  # "ustar" lives here in every tar header


class CheckpointSnapshots:
    def __init__(self, machine: StateMachine, directory: str | Path) -> None:
        self.machine = machine
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.installed = 0
        self.taken = 0
        self._installed_from: str | None = None
        """The checkpoint the state was last installed from: pysyncobj reads the snapshot
        again once the group has installed a received one, and that read must not install it
        a second time (a checkpoint's own applied index may be below the snapshot's index, when
        Raft's last entries before it were no-ops)."""

    # --- pysyncobj serializer hooks (driver thread) ---------------------------------------

    def serialize(self, file_name: str, raft_data: Any) -> None:
        index = int(raft_data[0][1])
        name = f"ckpt-{index}"
        target = self.dir / name
        if not target.exists():
            self.machine.checkpoint(str(target))
        for old in self.dir.glob("ckpt-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        meta = {"index": index, "checkpoint": name, "raft": raft_data}
        with open(file_name, "wb") as f:
            f.write(META_MAGIC + pickle.dumps(meta))
        self.taken += 1

    def deserialize(self, file_name: str) -> Any:
        with open(file_name, "rb") as f:
            head = f.read(TAR_MAGIC_OFFSET + 8)
        if head.startswith(META_MAGIC):
            meta = _read_meta(Path(file_name))
            checkpoint = self.dir / meta["checkpoint"]
        elif head[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + 5] == b"ustar":
            meta, checkpoint = self.unpack(Path(file_name))
        else:
            raise ValueError(f"{file_name} is not a raftchat snapshot")
        if self._installed_from != str(checkpoint):
            self._install_if_newer(meta, checkpoint)
        return meta["raft"]

    def unpack(self, tar_path: Path) -> tuple[dict[str, Any], Path]:
        """Unpack a transfer received from a leader: its checkpoint goes next to the local
        ones, and ``tar_path`` becomes a plain metadata file naming it. Installs nothing."""
        incoming = self.dir / "incoming"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir()
        with tarfile.open(tar_path) as tar:
            tar.extractall(incoming, filter="data")
        meta = _read_meta(incoming / "meta")
        target = self.dir / meta["checkpoint"]
        shutil.rmtree(target, ignore_errors=True)
        os.replace(incoming / "checkpoint", target)
        shutil.rmtree(incoming, ignore_errors=True)
        # Rewrite the file as a plain metadata file pointing at the local checkpoint, so that,
        # once it is the dump file, a restart does not unpack the tar again.
        with open(tar_path, "wb") as f:
            f.write(META_MAGIC + pickle.dumps(meta))
        return meta, target

    def install_received(self, meta: dict[str, Any], checkpoint: Path) -> None:
        """Install an unpacked transfer's checkpoint, if the state machine is older."""
        self._install_if_newer(meta, checkpoint)

    def _install_if_newer(self, meta: dict[str, Any], checkpoint: Path) -> None:
        if self.machine.applied_index() < meta["index"]:
            log.info("installing snapshot at index %d", meta["index"])
            self.machine.install(str(checkpoint))
            self.installed += 1
            self._installed_from = str(checkpoint)

    def discard(self, checkpoint: Path, dump_file: Path) -> None:
        """Drop an unpacked transfer's checkpoint, unless the local snapshot names it (the
        same index: ``unpack`` put the received copy in its place)."""
        try:
            kept = _read_meta(dump_file)["checkpoint"]
        except (OSError, ValueError):
            kept = None
        if checkpoint.name != kept:
            shutil.rmtree(checkpoint, ignore_errors=True)

    # --- shipping to a follower (leader side) ---------------------------------------------

    def pin(self, dump_file: str, name: str) -> tuple[dict[str, Any], Path]:
        """Hard-link the current snapshot into a private directory (cheap). Runs on the driver
        thread, like ``serialize``, which deletes older checkpoints: so the files a transfer
        reads cannot vanish under it."""
        meta = _read_meta(Path(dump_file))
        pinned = self.dir / name
        shutil.rmtree(pinned, ignore_errors=True)
        shutil.copytree(self.dir / meta["checkpoint"], pinned, copy_function=os.link)
        return meta, pinned

    def build_transfer(self, meta: dict[str, Any], pinned: Path, out_path: Path) -> None:
        tmp = out_path.with_suffix(".tmp")
        try:
            with tarfile.open(tmp, "w") as tar:
                raw = META_MAGIC + pickle.dumps(meta)
                info = tarfile.TarInfo("meta")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
                tar.add(pinned, arcname="checkpoint")
            os.replace(tmp, out_path)
        finally:
            shutil.rmtree(pinned, ignore_errors=True)


def _read_meta(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if not raw.startswith(META_MAGIC):
        raise ValueError(f"{path} is not snapshot metadata")
    meta: dict[str, Any] = pickle.loads(raw[len(META_MAGIC) :])
    return meta


class _Transfer:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.failed = False
        self.file: Any = None
        self.sent = 0


class CheckpointTransmitter(Serializer):  # type: ignore[misc]
    """pysyncobj's Serializer, except that what it transmits to a follower is a tar of the
    snapshot metadata and its checkpoint, built off the driver thread."""

    def __init__(
        self, file_name: str, batch_size: int, snapshots: CheckpointSnapshots, **kw: Any
    ) -> None:
        super().__init__(file_name, batch_size, False, **kw)
        self._batch = batch_size
        self.snapshots = snapshots
        self._transfers: dict[Any, _Transfer] = {}
        self._counter = 0
        self.dump_path = Path(file_name)
        self.incoming_path = Path(file_name + ".incoming")
        """Where a snapshot sent by a leader is collected: never over the dump file, which
        keeps this replica's own snapshot until the group has checked and taken the new one
        (``cluster.raft.follower``)."""
        self._incoming: Any = None
        self.not_ready: Callable[[Any], None] | None = None
        """Told (on the driver thread) when a member waits for a transfer still being built."""

    def setTransmissionData(self, data: Any) -> bool:  # pysyncobj names it so (follower)
        """Collect a leader's snapshot chunks in ``incoming_path``; True when the last one is
        in (pysyncobj then asks the group to load it)."""
        if data is None:
            return False
        chunk, first, last = data
        if first:
            self._close_incoming()
            self._incoming = open(self.incoming_path, "wb")  # noqa: SIM115 - kept across chunks
        elif self._incoming is None:
            return False  # the middle of a transfer whose start this replica did not see
        try:
            self._incoming.write(chunk)
        except OSError:
            log.exception("writing a received snapshot failed")
            self._close_incoming()
            return False
        if last:
            self._close_incoming()
            return True
        return False

    def _close_incoming(self) -> None:
        if self._incoming is not None:
            self._incoming.close()
            self._incoming = None

    def getTransmissionData(self, transmission_id: Any) -> Any:  # pysyncobj names it so
        xfer = self._transfers.get(transmission_id)
        if xfer is None:
            xfer = self._transfers[transmission_id] = _Transfer()
            self._counter += 1
            name = f"xfer-{os.getpid()}-{self._counter}"  # unique: a cancelled build may linger
            try:
                meta, pinned = self.snapshots.pin(str(self.dump_path), f"{name}.d")
            except Exception:
                log.exception("pinning a snapshot for transfer failed")
                self._transfers.pop(transmission_id, None)
                return None
            threading.Thread(
                target=self._build,
                args=(xfer, meta, pinned, self.snapshots.dir / f"{name}.tar"),
                name="snapshot-xfer",
                daemon=True,
            ).start()
            return None
        if not xfer.ready.is_set():
            if self.not_ready is not None:
                self.not_ready(transmission_id)
            return None  # pysyncobj asks again on its next append round
        if xfer.failed:
            self._transfers.pop(transmission_id, None)
            return None
        data = xfer.file.read(self._batch)
        first = xfer.sent == 0
        xfer.sent += len(data)
        last = len(data) == 0
        if last:
            self.cancelTransmisstion(transmission_id)
        return data, first, last

    def _build(self, xfer: _Transfer, meta: dict[str, Any], pinned: Path, out: Path) -> None:
        try:
            self.snapshots.build_transfer(meta, pinned, out)
            xfer.file = open(out, "rb")  # noqa: SIM115 - closed when the transfer ends
            out.unlink()  # the open handle keeps the data; nothing to clean up later
        except Exception:
            log.exception("building a snapshot transfer failed")
            xfer.failed = True
        xfer.ready.set()

    def cancelTransmisstion(self, transmission_id: Any) -> None:  # pysyncobj names it so
        xfer = self._transfers.pop(transmission_id, None)
        if xfer is not None and xfer.file is not None:
            xfer.file.close()


def install_checkpoint_transmitter(
    group: ReplicatedGroup, snapshots: CheckpointSnapshots
) -> CheckpointTransmitter:
    """Swap the group's pysyncobj Serializer for the checkpoint-shipping one."""
    conf = seam.conf(group)
    transmitter = CheckpointTransmitter(
        conf.fullDumpFile,
        conf.logCompactionBatchSize,
        snapshots,
        serializer=conf.serializer,
        deserializer=conf.deserializer,
        serializeChecker=conf.serializeChecker,
    )
    seam.set_serializer(group, transmitter)
    return transmitter
