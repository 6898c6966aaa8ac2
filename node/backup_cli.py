"""``raftchat backup --api URL --out DIR``: an online backup of a running cluster through its
admin HTTP API (``docs/operations.md``, "Backup and restore").

For each group, the controller's first, it asks the group's leader for a checkpoint
(``POST /cluster/backup/checkpoint``: a read barrier, then a RocksDB checkpoint at the applied
index), reads its files in chunks (``GET /cluster/backup/file``) into ``DIR/g<N>/``, checks
each file's size and SHA-256 against what the leader listed, and releases the checkpoint. The
manifest is written last. A backup that fails leaves no directory behind.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.defaults import ADMIN_TOKEN_ENV, DEFAULT_HTTP_URL, DEV_DATA_DIR

from . import backup_manifest as manifest

TIMEOUT_S = 60.0
"""One request: a checkpoint waits for a read barrier and a memtable flush."""
LEADER_HOPS = 10
"""Redirects and retries while looking for a group's leader (elections, moved leaderships)."""
RETRY_PAUSE_S = 0.3


class BackupFailed(Exception):
    """The backup could not be taken; the message says why in one line."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "backup",
        help="online backup of a running cluster (every group's checkpoint and the cluster map)",
    )
    p.add_argument(
        "--api",
        action="append",
        help=f"HTTP API of any member, repeatable: tried in turn (default {DEFAULT_HTTP_URL})",
    )
    p.add_argument("--out", required=True, help="new directory for the backup")
    p.add_argument(
        "--admin-token",
        help=f"the nodes' auth.admin_token (default: ${ADMIN_TOKEN_ENV}; without --api, "
        f"also {DEV_DATA_DIR}/admin.token of `raftchat dev`)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from client.credentials import admin_token
    from client.errors import ClientError

    from .private_files import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)  # users' messages and token hashes: the operator's alone
    out = Path(args.out)
    try:
        token = admin_token(args.admin_token, default_target=not args.api)
        _make_out(out)
    except (ClientError, BackupFailed) as e:
        print(f"raftchat backup: {e}", file=sys.stderr)
        return 1
    try:
        summary = take_backup(args.api or [DEFAULT_HTTP_URL], token, out, print_progress)
    except BackupFailed as e:
        shutil.rmtree(out, ignore_errors=True)
        print(f"raftchat backup: {e}", file=sys.stderr)
        return 1
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    print(
        f"backup of cluster {summary['cluster_id']} in {out}: {summary['groups']} groups, "
        f"{summary['bytes']} bytes, {summary['seconds']:.2f} s"
    )
    return 0


def print_progress(line: str) -> None:
    print(line, flush=True)


def _make_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupFailed(f"{out} exists and is not an empty directory")
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise BackupFailed(f"cannot create {out}: {e.strerror or e}") from None


def take_backup(
    urls: list[str], token: str | None, out: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Back the cluster up into the empty directory ``out`` (made if missing); returns a
    summary."""
    import httpx

    from client.http import TokenAuth

    from .cluster_health import member_url

    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    began = time.time()
    with httpx.Client(timeout=TIMEOUT_S, auth=TokenAuth(None, token)) as http:
        url, status = _status(http, urls)
        members = {int(n): member_url(url, h) for n, h in status["nodes"].items()}
        leaders = {int(g["group"]): g.get("leader") for g in status["groups"]}
        groups: list[dict[str, Any]] = []
        placement: Any = None
        cluster_id = None
        total = 0
        for group in sorted(leaders):
            node_url, taken = _checkpoint(http, members, group, leaders[group])
            try:
                size = _download(http, node_url, taken, out / manifest.group_dir_name(group))
            finally:
                _release(http, node_url, taken["id"])
            total += size
            cluster_id = cluster_id or taken.get("cluster_id")
            if group == 0:
                placement = taken["placement"]
            groups.append(
                {
                    "group": group,
                    "index": taken["index"],
                    "term": taken["term"],
                    "node_id": taken["node_id"],
                    "files": taken["files"],
                }
            )
            progress(
                f"group {group}: index {taken['index']} (term {taken['term']}) from node "
                f"{taken['node_id']}, {len(taken['files'])} files, {size} bytes"
            )
    manifest.write(
        out,
        {
            "cluster_id": cluster_id or "",
            "created_unix_ms": int(began * 1000),
            "finished_unix_ms": int(time.time() * 1000),
            "source": url,
            "placement": placement,
            "groups": groups,
        },
    )
    seconds = time.time() - began
    return {"cluster_id": cluster_id, "groups": len(groups), "bytes": total, "seconds": seconds}


def _status(http: Any, urls: list[str]) -> tuple[str, dict[str, Any]]:
    import httpx

    problems = []
    for url in urls:
        try:
            resp = http.get(f"{url.rstrip('/')}/cluster/status")
        except httpx.HTTPError as e:
            problems.append(f"{url}: {e}")
            continue
        if resp.status_code == 200:
            return url.rstrip("/"), resp.json()
        problems.append(f"{url}: {resp.status_code} {_msg(resp)}")
    raise BackupFailed("no member answered /cluster/status: " + "; ".join(problems))


def _checkpoint(
    http: Any, members: dict[int, str], group: int, leader: int | None
) -> tuple[str, dict[str, Any]]:
    """(the leader's URL, a checkpoint of ``group`` it took), following the answers that name
    another leader."""
    import httpx

    order = sorted(members)
    target = leader if leader in members else None
    last = "no member was asked"
    for attempt in range(LEADER_HOPS):
        if target is None:
            target = order[attempt % len(order)]
        try:
            resp = http.post(f"{members[target]}/cluster/backup/checkpoint", json={"group": group})
        except httpx.HTTPError as e:
            resp, last = None, f"node {target}: {e}"
        if resp is not None:
            if resp.status_code == 200:
                return members[target], _checked(resp.json(), group)
            last = f"node {target}: {resp.status_code} {_msg(resp)}"
            if resp.status_code in (400, 401, 403, 429):
                break  # asking again, or elsewhere, gets the same answer
            named = _field(resp, "leader")
            if resp.status_code == 409 and named in members and named != target:
                target = named  # the leader this node knows of
                continue
        # No leader known yet (an election), or it just moved: ask around after a pause.
        target = None
        time.sleep(RETRY_PAUSE_S)  # elections take a fraction of a second; nothing to wait on
    raise BackupFailed(f"could not take a checkpoint of group {group}: {last}")


def _checked(answer: Any, group: int) -> dict[str, Any]:
    """The node's answer, if it has the shape this client relies on."""
    try:
        ok = (
            answer["group"] == group
            and isinstance(answer["id"], str)
            and all(isinstance(answer[k], int) for k in ("index", "term", "node_id"))
            and all(
                isinstance(f["name"], str)
                and isinstance(f["size"], int)
                and isinstance(f["sha256"], str)
                for f in answer["files"]
            )
            and (group != 0 or isinstance(answer["placement"], dict))
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise BackupFailed(f"unexpected checkpoint answer for group {group}: {str(answer)[:200]}")
    return dict(answer)


def _download(http: Any, node_url: str, taken: dict[str, Any], into: Path) -> int:
    """Read every file of a checkpoint into ``into`` in chunks, checking sizes and digests
    against the node's list; returns the bytes read."""
    into.mkdir(mode=0o700)
    total = 0
    for f in taken["files"]:
        name, size, expected = str(f["name"]), int(f["size"]), str(f["sha256"])
        if not manifest.valid_name(name):
            raise BackupFailed(f"node listed an unusable file name {name[:100]!r}")
        digest = hashlib.sha256()
        offset = 0
        with open(into / name, "xb") as dst:
            while offset < size:
                params = {"id": taken["id"], "name": name, "offset": str(offset)}
                resp = http.get(f"{node_url}/cluster/backup/file", params=params)
                if resp.status_code != 200:
                    raise BackupFailed(
                        f"reading {name} of group {taken['group']}: {resp.status_code} {_msg(resp)}"
                    )
                chunk = resp.content
                if not chunk:
                    raise BackupFailed(f"{name} of group {taken['group']} ended early")
                digest.update(chunk)
                dst.write(chunk)
                offset += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if offset != size or digest.hexdigest() != expected:
            raise BackupFailed(
                f"{name} of group {taken['group']} does not match the size and checksum "
                "its node listed"
            )
        total += size
    return total


def _release(http: Any, node_url: str, backup_id: str) -> None:
    import httpx

    # On failure the node deletes it after its idle time, or at its next start.
    with contextlib.suppress(httpx.HTTPError):
        http.post(f"{node_url}/cluster/backup/release", json={"id": backup_id})


def _field(resp: Any, name: str) -> Any:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body.get(name) if isinstance(body, dict) else None


def _msg(resp: Any) -> str:
    msg = _field(resp, "msg")
    return str(msg) if msg else resp.text[:200]
