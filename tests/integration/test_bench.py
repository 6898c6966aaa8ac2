"""``raftchat bench`` end to end, tiny: it starts its own cluster, measures, and reports JSON.

Only the shape and the sanity of the report are checked (positive rates, latencies present,
every SEND answered); performance numbers depend on the machine and are never asserted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.load import SUMMARY_PREFIX

ROOT = Path(__file__).resolve().parents[2]


def _host_base() -> str:
    # Not 127.p.x.y (p >= 20), where tests/conftest.py puts its nodes, nor the bench's default
    # 127.0.0.1x or the fuzzer's 127.0.240.x.
    return f"127.0.{os.getpid() % 200 + 20}"


def _bench(*args: str, timeout_s: float = 240.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_tiny_bench_reports_every_metric(tmp_path: Path) -> None:
    out_file = tmp_path / "bench.json"
    data = tmp_path / "data"
    proc = _bench(
        "--host-base",
        _host_base(),
        "--data",
        str(data),
        "--duration",
        "3",
        "--warmup",
        "1",
        "--clients",
        "4",
        "--channels",
        "2",
        "--window",
        "4",
        "--workers",
        "1",
        "--skip-idle",
        "--failover-rounds",
        "1",
        "--json",
        str(out_file),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith(SUMMARY_PREFIX)]
    assert len(summary) == 1
    result = json.loads(summary[0][len(SUMMARY_PREFIX) :])
    assert json.loads(out_file.read_text()) == result
    assert "durable sends/s" in proc.stdout  # the readable table

    load = result["load"]
    assert load["sends_per_s"] > 0
    assert load["sends_ok"] == load["sends_issued"] > 0
    assert load["lost_acks"] == 0 and load["failures"] == {}
    assert load["disconnects"] == 0 and load["bad_recv"] == 0
    for key in ("sendack_ms", "delivery_cross_node_ms"):
        p = load[key]
        assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"], (key, p)
        assert p["n"] > 0
    # Two members per channel on different nodes: every delivery crosses nodes.
    assert load["delivery_same_node_ms"] is None
    d = load["deliveries"]
    assert d["expected"] == load["sendack_ms"]["n"]
    assert 0 < d["received"] <= d["expected"]
    assert set(load["cpu"]["pct_of_one_core"]) == {"node1", "node2", "node3", "load0"}

    commit = load["commit_ms"]
    assert commit["groups"] and commit["p50"] > 0 and commit["p99"] >= commit["p50"]
    assert all(g["leader"] in (1, 2, 3) and g["n"] > 0 for g in commit["groups"])

    assert result["idle"] is None
    rounds = result["failover"]["rounds"]
    assert len(rounds) == 1
    r = rounds[0]
    assert r["unavailable_s"] is not None and r["unavailable_s"] > 0
    assert r["killed"] != r["writer_node"] and r["new_leader"] != r["killed"]

    metrics = {t["metric"]: t for t in result["targets"]}
    assert set(metrics) == {
        "durable sends/s",
        "SEND->SENDACK p99 ms",
        "commit p50 ms",
        "idle node CPU % of a core (max)",
        "writes resume after leader kill s (max)",
        "lost SENDACKs",
    }
    assert metrics["idle node CPU % of a core (max)"]["result"] == "n/a"
    assert all(t["result"] in ("pass", "FAIL", "n/a") and t["target"] for t in metrics.values())
    # The data directory given with --data is kept, with every node stopped.
    assert sorted(p.name for p in data.glob("node?.log")) == ["node1.log", "node2.log", "node3.log"]


def test_bench_refuses_ports_in_use(tmp_path: Path) -> None:
    host = f"{_host_base()}.11"
    with socket.socket() as s:
        # The previous test's cluster on this address may leave 5001 in TIME_WAIT.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 5001))
        s.listen()
        proc = _bench("--host-base", _host_base(), "--skip-idle", "--skip-failover", timeout_s=60)
    assert proc.returncode == 1
    assert f"{host}:5001" in proc.stderr and "in use" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [["--clients", "3", "--channels", "2"], ["--host-base", "10.0.0"], ["--nodes", "2"]],
)
def test_bench_rejects_bad_arguments(args: list[str]) -> None:
    proc = _bench(*args, timeout_s=60)
    assert proc.returncode == 1
    assert "raftchat bench:" in proc.stderr
