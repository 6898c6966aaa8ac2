"""``raftchat restore --backup DIR [--config node.toml]``: seed one node's empty data
directory of a new cluster from a backup (``docs/operations.md``, "Backup and restore").

Run it once on every member of the new cluster, with the configuration that member will run
(``RAFTCHAT_*`` variables override the file, as for ``raftchat node``). It

1. checks the backup (manifest, then every file's size and SHA-256, as it reads them: a
   damaged, partial or forged backup is refused in one line, and nothing is left behind);
2. makes the data directory's identity as a new member of the configured cluster
   (``node/identity.py``: the cluster id follows from ``cluster.nodes`` and the password);
3. copies the checkpoint of every slot group this node replicates under the new cluster's
   map into ``groups/g<N>/db``, with its applied Raft index set back to 0: the new cluster's
   Raft logs start empty, and index 1 of the new log must not look applied;
4. writes the controller's map: the backup's slot table (so every key stays in its group),
   with the groups placed on the new members as a new cluster would place them.

The nodes then start as usual and elect leaders; each group holds what its checkpoint held, so
seqs, message ids, channels and users carry on from there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from cluster.placement import Placement, initial_placement, to_json

from . import backup_manifest as manifest
from .backup_manifest import BackupInvalid, Manifest

RESTORED_FROM = "restored-from.json"
"""Left in the data directory: which backup (cluster id, time, per-group index) it came from."""


class RestoreRefused(Exception):
    """The restore cannot go ahead; the message says why in one line."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "restore", help="seed an empty data directory of a new cluster's node from a backup"
    )
    p.add_argument("--backup", required=True, help="directory written by `raftchat backup`")
    p.add_argument(
        "--config",
        help="the TOML config this node will run with (RAFTCHAT_* variables override it)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .private_files import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)
    try:
        cfg = load_config(args.config)
        result = restore(Path(args.backup), cfg)
    except ConfigError as e:
        print(f"raftchat restore: configuration error: {e}", file=sys.stderr)
        return 2
    except (BackupInvalid, RestoreRefused) as e:
        print(f"raftchat restore: {e}", file=sys.stderr)
        return 2
    print(
        f"node {cfg.node.id}: restored groups {', '.join(map(str, result['groups']))} of cluster "
        f"{result['source_cluster_id']} into {result['data_dir']} (cluster id "
        f"{result['cluster_id']})"
    )
    return 0


def restore(backup: Path, cfg: Any) -> dict[str, Any]:
    """Restore ``backup`` into the (empty) data directory of ``cfg``'s node."""
    from .identity import DataDir
    from .startup import StartupError

    found = manifest.load(backup)
    placement = new_placement(found, cfg)
    data_dir = cfg.node.data_path()
    _check_empty(data_dir)
    try:
        datadir = DataDir.open(cfg)
    except StartupError as e:
        raise RestoreRefused(str(e)) from None
    mine = placement.groups_of_node(cfg.node.id)
    try:
        for group in sorted(found.groups):
            target = data_dir / "groups" / f"g{group}" / "db" if group in mine else None
            _restore_group(backup, found, group, target)
        _write_controller(data_dir, placement)
        _write_origin(data_dir, found)
    except BaseException:
        _empty(data_dir)
        raise
    return {
        "groups": mine,
        "data_dir": str(data_dir),
        "cluster_id": datadir.identity.cluster_id,
        "source_cluster_id": found.cluster_id,
    }


def new_placement(found: Manifest, cfg: Any) -> Placement:
    """The new cluster's map: the backup's slot table, the groups on the configured members."""
    groups = len(found.placement.groups)
    if cfg.cluster.groups != groups:
        raise RestoreRefused(
            f"the backup has {groups} slot groups and this node's cluster.groups is "
            f"{cfg.cluster.groups}: set cluster.groups = {groups} on every node of the new cluster"
        )
    if cfg.cluster.join:
        raise RestoreRefused(
            "cluster.join is set: restore the initial members (cluster.nodes), then let other "
            "nodes join the restored cluster"
        )
    fresh = initial_placement(cfg.cluster_nodes(), groups, cfg.cluster.replicas)
    fresh.slot_table = list(found.placement.slot_table)
    return fresh


def _check_empty(data_dir: Path) -> None:
    if data_dir.is_symlink() or (data_dir.exists() and not data_dir.is_dir()):
        raise RestoreRefused(f"{data_dir} is not a directory")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise RestoreRefused(
            f"data directory {data_dir} is not empty: a restore seeds a new node's directory "
            "only (move the old one away first)"
        )


def _empty(data_dir: Path) -> None:
    """Remove what the restore made (the directory was empty when it began)."""
    for child in data_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _restore_group(backup: Path, found: Manifest, group: int, target: Path | None) -> None:
    """Check every file of the group's checkpoint; copy them to ``target`` (a new store) if
    given, then open the copy and start its Raft history over."""
    from .storage import Store

    checkpoint = found.groups[group]
    if target is not None:
        target.mkdir(parents=True, mode=0o700)
    for f in checkpoint.files:
        manifest.check_file(backup, group, f, None if target is None else target / f.name)
    if target is None:
        return
    try:
        store = Store(target)
    except Exception as e:
        raise BackupInvalid(
            f"the checkpoint of group {group} does not open as a database: {e}"
        ) from None
    try:
        applied = store.applied_index()
        if applied != checkpoint.index:
            raise BackupInvalid(
                f"the checkpoint of group {group} is at index {applied}, the manifest says "
                f"{checkpoint.index}"
            )
        batch = store.batch()
        batch.set_applied(0)
        store.write(batch)
        store.flush_wal()
    finally:
        store.close()


def _write_controller(data_dir: Path, placement: Placement) -> None:
    from .controller import PLACEMENT_KEY
    from .storage import Store

    store = Store(data_dir / "controller" / "db")
    try:
        batch = store.batch()
        batch.put_state(PLACEMENT_KEY, json.dumps(to_json(placement)).encode())
        store.write(batch)
        store.flush_wal()
    finally:
        store.close()


def _write_origin(data_dir: Path, found: Manifest) -> None:
    origin = {
        "cluster_id": found.cluster_id,
        "created_unix_ms": found.created_unix_ms,
        "groups": {str(g): {"index": c.index, "term": c.term} for g, c in found.groups.items()},
    }
    (data_dir / RESTORED_FROM).write_text(json.dumps(origin, indent=1) + "\n")
