"""``raftchat cluster status`` against a real three-node cluster: each member's health (a
SIGSTOPped node is paused, a stopped one unreachable) and the groups' commit figures and lag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ADMIN_TOKEN, Cluster

ROOT = Path(__file__).resolve().parents[2]


def status(cluster: Cluster, *extra: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAFTCHAT_")}
    api = f"http://{cluster.hosts[1]}:5001"
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "cluster", "status", "--api", api, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**clean, "RAFTCHAT_AUTH_ADMIN_TOKEN": ADMIN_TOKEN},
    )


def health_of(out: str) -> dict[int, str]:
    """node id -> health, from the node table."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["node", "address", "health"])
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[int(cells[0])] = cells[2]
    return rows


def group_rows(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["group", "replicas"])
    return {ln.split()[0]: ln.split() for ln in lines[start + 1 :] if ln.strip()}


def test_status_names_paused_and_unreachable_nodes_and_shows_lag(cluster3: Cluster) -> None:
    done = status(cluster3)
    assert done.returncode == 0, done.stderr
    assert health_of(done.stdout) == {1: "ok", 2: "ok", 3: "ok"}, done.stdout
    groups = group_rows(done.stdout)
    ctrl = groups["ctrl"]
    # group, replicas, leader, term, commit, applied, commit ms, then one "node:lag" per follower
    assert ctrl[1] == "1,2,3" and ctrl[2] in {"1", "2", "3"}
    assert int(ctrl[3]) >= 1 and int(ctrl[4]) >= 1
    followers = sorted(cell.split(":")[0] for cell in ctrl[7:])
    assert followers == sorted({"1", "2", "3"} - {ctrl[2]})
    assert all(cell.split(":")[1].isdigit() for cell in ctrl[7:]), ctrl

    cluster3.nodes[2].pause()  # SIGSTOP: its sockets stay, nothing answers
    try:
        done = status(cluster3)
        assert done.returncode == 0, done.stderr
        assert health_of(done.stdout) == {1: "ok", 2: "paused", 3: "ok"}, done.stdout
        # Node 2's own figures are unknown: its lag shows as "?" wherever it is a follower.
        for row in group_rows(done.stdout).values():
            if "2" in row[1].split(",") and row[2] != "2":
                assert "2:?" in row[7:], row
        as_json = json.loads(status(cluster3, "--json").stdout)
        assert as_json["health"]["2"]["health"] == "paused"
        assert as_json["health"]["1"]["health"] == "ok"
    finally:
        cluster3.nodes[2].resume()

    done = status(cluster3)
    assert health_of(done.stdout) == {1: "ok", 2: "ok", 3: "ok"}, done.stdout

    cluster3.nodes[3].stop()
    done = status(cluster3)
    assert done.returncode == 0, done.stderr
    assert health_of(done.stdout)[3] == "unreachable", done.stdout
    assert "Connection refused" in done.stdout
