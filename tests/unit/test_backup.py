"""Backups as untrusted input: a backup directory built from real RocksDB checkpoints (through
the node's own ``BackupCheckpoints``), restored into a node's data directory, then damaged,
cut short or forged in every way ``raftchat restore`` must refuse, in one line, leaving the
data directory as empty as it found it. Plus the node side's bounds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.placement import HASH_SLOTS, initial_placement, parse_nodes, to_json
from node import backup_checkpoints
from node import backup_manifest as manifest
from node.backup_checkpoints import BackupCheckpoints, BackupRefused, read_chunk
from node.backup_manifest import BackupInvalid
from node.config import Config, load_config
from node.controller import PLACEMENT_KEY
from node.restore import RESTORED_FROM, RestoreRefused, restore
from node.storage import MessageRecord, Store

ROOT = Path(__file__).resolve().parents[2]
GROUPS = 2
OLD = "1@127.9.9.11,2@127.9.9.12,3@127.9.9.13"
NEW = "1@127.9.8.11,2@127.9.8.12,3@127.9.8.13"


def env_of(data_dir: Path, groups: int = GROUPS, node_id: int = 1) -> dict[str, str]:
    return {
        "RAFTCHAT_NODE_ID": str(node_id),
        "RAFTCHAT_NODE_HOST": f"127.9.8.1{node_id}",
        "RAFTCHAT_NODE_DATA_DIR": str(data_dir),
        "RAFTCHAT_CLUSTER_NODES": NEW,
        "RAFTCHAT_CLUSTER_PASSWORD": "new-cluster-secret",
        "RAFTCHAT_CLUSTER_GROUPS": str(groups),
    }


def config(data_dir: Path, groups: int = GROUPS) -> Config:
    return load_config(env=env_of(data_dir, groups))


def make_backup(tmp: Path) -> Path:
    """A backup of a 3-node cluster of ``GROUPS`` groups: group g holds g messages in channel
    ``c<g>``, applied at index 10 + g."""
    node_dir, out = tmp / "source-node", tmp / "backup"
    out.mkdir()
    source = BackupCheckpoints(node_dir, "old-cluster")
    placement = initial_placement(parse_nodes(OLD), GROUPS, 3)
    groups = []
    for g in range(GROUPS + 1):
        store = Store(node_dir / f"g{g}")
        batch = store.batch()
        for seq in range(1, g + 1):
            batch.append_message(MessageRecord(100 + seq, seq, 0, f"c{g}", 2, "u", f"n{seq}", b"x"))
        batch.set_applied(10 + g)
        store.write(batch)
        taken = source.take(source.reserve(), g, 3, store)
        store.close()
        shutil.copytree(taken.directory, out / f"g{g}")
        source.release(taken.id)
        files = [f.to_json() for f in taken.files.values()]
        groups.append({"group": g, "index": taken.index, "term": 3, "node_id": 1, "files": files})
    manifest.write(
        out,
        {
            "cluster_id": "old-cluster",
            "created_unix_ms": 1,
            "placement": to_json(placement),
            "groups": groups,
        },
    )
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_backup(tmp_path_factory.mktemp("backup"))


@pytest.fixture
def backup(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "backup"
    shutil.copytree(pristine, copy)
    return copy


def edit_manifest(backup: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the manifest and give it a matching checksum: a forgery, not mere damage."""
    doc = json.loads((backup / manifest.MANIFEST).read_text())
    change(doc)
    doc["checksum"] = manifest.checksum(doc)
    (backup / manifest.MANIFEST).write_text(json.dumps(doc))


def largest_file(backup: Path, group: int = 1) -> Path:
    doc = json.loads((backup / manifest.MANIFEST).read_text())
    largest = max(doc["groups"][group]["files"], key=lambda f: f["size"])
    return backup / f"g{group}" / largest["name"]


# --- a good backup --------------------------------------------------------------------------


def test_restore_seeds_the_groups_with_a_fresh_raft_history_and_the_new_map(
    backup: Path, tmp_path: Path
) -> None:
    data = tmp_path / "node1"
    result = restore(backup, config(data))
    assert result["groups"] == [1, 2] and result["source_cluster_id"] == "old-cluster"
    for g in (1, 2):
        store = Store(data / "groups" / f"g{g}" / "db")
        try:
            # The data came over; the Raft index starts again, for the new cluster's log.
            assert [m.client_msg_no for m in store.messages(2, f"c{g}", 0, 0, 10)] == [
                f"n{s}" for s in range(1, g + 1)
            ]
            assert store.applied_index() == 0
        finally:
            store.close()
    controller = Store(data / "controller" / "db")
    try:
        placement = json.loads(controller.get_state(PLACEMENT_KEY) or b"")
    finally:
        controller.close()
    assert placement["nodes"] == {"1": "127.9.8.11", "2": "127.9.8.12", "3": "127.9.8.13"}
    assert len(placement["slot_table"]) == HASH_SLOTS
    identity = json.loads((data / "identity.json").read_text())
    assert identity["node_id"] == 1 and identity["cluster_id"] != "old-cluster"
    origin = json.loads((data / RESTORED_FROM).read_text())
    assert origin["cluster_id"] == "old-cluster" and origin["groups"]["2"]["index"] == 12


# --- refused, and nothing left behind --------------------------------------------------------


def refused(backup: Path, data: Path, *words: str, groups: int = GROUPS) -> str:
    with pytest.raises((BackupInvalid, RestoreRefused)) as caught:
        restore(backup, config(data, groups))
    line = str(caught.value)
    assert "\n" not in line and all(w in line for w in words), line
    assert not data.exists() or not any(data.iterdir()), list(data.iterdir())
    return line


def test_a_damaged_file_is_refused_by_its_checksum(backup: Path, tmp_path: Path) -> None:
    path = largest_file(backup, 2)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    refused(backup, tmp_path / "node1", "damaged", path.name, "checksum")


def test_a_file_of_another_size_is_refused(backup: Path, tmp_path: Path) -> None:
    path = largest_file(backup)
    with open(path, "ab") as f:
        f.write(b"more")
    refused(backup, tmp_path / "node1", "damaged", "bytes")


def test_a_backup_without_its_manifest_is_unfinished(backup: Path, tmp_path: Path) -> None:
    (backup / manifest.MANIFEST).unlink()
    refused(backup, tmp_path / "node1", "did not finish")


def test_a_missing_file_or_group_is_incomplete(backup: Path, tmp_path: Path) -> None:
    largest_file(backup).unlink()
    refused(backup, tmp_path / "node1", "incomplete", "missing")
    edit_manifest(backup, lambda d: d["groups"].pop())
    refused(backup, tmp_path / "node1", "incomplete", "group(s) 2")


def test_an_edited_manifest_fails_its_checksum(backup: Path, tmp_path: Path) -> None:
    path = backup / manifest.MANIFEST
    path.write_text(path.read_text().replace('"index": 11', '"index": 99'))
    refused(backup, tmp_path / "node1", "damaged", "checksum")
    path.write_bytes(b"\x00" * 10)
    refused(backup, tmp_path / "node1", "not valid JSON")


def test_forged_file_names_never_leave_the_backup(backup: Path, tmp_path: Path) -> None:
    for name in ("../../etc/passwd", "/etc/passwd", "..", ".hidden", "a/b", "x" * 200):

        def forge(d: dict[str, Any], name: str = name) -> None:
            d["groups"][1]["files"][0]["name"] = name

        edit_manifest(backup, forge)
        refused(backup, tmp_path / "node1", "file name", "not valid")


def test_a_link_in_place_of_a_file_is_refused(backup: Path, tmp_path: Path) -> None:
    path = largest_file(backup)
    secret = tmp_path / "secret"
    secret.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(secret)
    refused(backup, tmp_path / "node1", "not a regular file")


def test_a_forged_index_is_caught_against_the_checkpoint(backup: Path, tmp_path: Path) -> None:
    edit_manifest(backup, lambda d: d["groups"][1].update(index=5))
    refused(backup, tmp_path / "node1", "group 1 is at index 11", "says 5")


def test_forged_fields_are_refused(backup: Path, tmp_path: Path) -> None:
    forgeries: list[Callable[[dict[str, Any]], None]] = [
        lambda d: d["groups"][1].update(index=-1),
        lambda d: d["groups"][1].update(index=True),
        lambda d: d["groups"][1]["files"][0].update(size=2**60),
        lambda d: d["groups"][1]["files"][0].update(sha256="z" * 64),
        lambda d: d["groups"].append(d["groups"][1]),
        lambda d: d["placement"].update(slot_table=[1] * 3),
        lambda d: d["placement"].update(slot_table=[9] * HASH_SLOTS),
        lambda d: d["placement"].update(groups="x"),
        lambda d: d.update(groups={"1": 2}),
        lambda d: d.pop("cluster_id"),
    ]
    for forge in forgeries:
        edit_manifest(backup, forge)
        line = refused(backup, tmp_path / "node1", "damaged")
        assert len(line) < 400, line
    edit_manifest(backup, lambda d: d.update(version=2))
    refused(backup, tmp_path / "node1", "format version 2")


def test_a_cluster_of_another_group_count_is_refused(backup: Path, tmp_path: Path) -> None:
    refused(backup, tmp_path / "node1", "cluster.groups = 2", groups=8)


def test_a_data_directory_with_data_is_never_touched(backup: Path, tmp_path: Path) -> None:
    data = tmp_path / "node1"
    data.mkdir()
    (data / "keep").write_text("mine")
    with pytest.raises(RestoreRefused, match="not empty"):
        restore(backup, config(data))
    assert [p.name for p in data.iterdir()] == ["keep"]


def test_the_command_says_why_in_one_line_and_fails(backup: Path, tmp_path: Path) -> None:
    path = largest_file(backup, 2)
    path.write_bytes(path.read_bytes()[:-1] + b"?")
    data = tmp_path / "node1"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAFTCHAT_")}
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "restore", "--backup", str(backup)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**clean, **env_of(data)},
    )
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("raftchat restore: "), done
    assert "checksum" in done.stderr and not any(data.iterdir())


# --- the node's side: bounded, and only its own files ----------------------------------------


def test_a_node_holds_few_checkpoints_and_expires_forgotten_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "node" / "db")
    registry = BackupCheckpoints(tmp_path / "node", None)
    try:
        held = [registry.take(registry.reserve(), 1, 1, store) for _ in range(4)]
        with pytest.raises(BackupRefused) as caught:
            registry.reserve()
        assert caught.value.status == 429 and "release" in str(caught.value)
        assert registry.release(held[0].id) and not held[0].directory.exists()
        registry.reserve()  # room again
        later = time.monotonic() + backup_checkpoints.IDLE_TTL_S + 1
        monkeypatch.setattr(backup_checkpoints.time, "monotonic", lambda: later)
        registry.expire()
        assert registry.held() == 1  # the reservation in progress stays
        assert not any(cp.directory.exists() for cp in held)
    finally:
        store.close()


def test_a_node_reads_only_its_own_files_in_bounded_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup_checkpoints, "CHUNK_BYTES", 7)
    store = Store(tmp_path / "node" / "db")
    registry = BackupCheckpoints(tmp_path / "node", None)
    try:
        taken = registry.take(registry.reserve(), 1, 1, store)
    finally:
        store.close()
    path, entry = registry.find(taken.id, "CURRENT")
    assert read_chunk(path, entry, 0) == path.read_bytes()[:7]
    assert read_chunk(path, entry, entry.size) == b""
    with pytest.raises(BackupRefused) as past:
        read_chunk(path, entry, entry.size + 1)
    assert past.value.status == 416
    for backup_id, name in [
        (taken.id, "../identity.json"),
        (taken.id, "/etc/passwd"),
        ("f" * 32, "CURRENT"),
        ("../" + taken.id[3:], "CURRENT"),
    ]:
        with pytest.raises(BackupRefused):
            registry.find(backup_id, name)
    # A node that starts again holds none: leftovers of the last process are deleted.
    BackupCheckpoints(tmp_path / "node", None)
    assert not taken.directory.exists()
