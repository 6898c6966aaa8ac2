"""A short live fuzzing run (``raftchat fuzz``, docs/fuzz.md) against a real three-node cluster:
every target gets frames, no node crashes, the workload loses and duplicates nothing, no bad
input gets a server error, and the run leaves no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# Outside tests/conftest.py's 127.0.20-219.x, the chaos runs' 127.0.251-252.x and the fuzzer's
# default 127.0.240.x.
HOST_BASE = "127.0.241"


def node_processes() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"RAFTCHAT_NODE_HOST={HOST_BASE}.".encode() in environ:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    yield
    for pid in node_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def fuzz_run(out: Path, *args: str, timeout_s: float = 170.0) -> tuple[int, dict[str, Any], str]:
    cmd = [sys.executable, "-m", "node.cli", "fuzz", "--out", str(out), "--host-base", HOST_BASE]
    proc = subprocess.Popen(
        [*cmd, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
        pytest.fail(f"the fuzz run took over {timeout_s} s:\n{stderr[-3000:]}")
    runs = sorted(out.iterdir())
    assert len(runs) == 1, stderr[-3000:]
    result_path = runs[0] / "fuzz.json"
    assert result_path.exists(), stderr[-3000:]
    return proc.returncode, json.loads(result_path.read_text()), stdout


@pytest.mark.timeout(200)
def test_a_short_fuzz_run_crashes_nothing_and_loses_nothing(tmp_path: Path) -> None:
    code, result, stdout = fuzz_run(
        tmp_path, "--time", "20", "--rate", "1500", "--seed", "3",
        "--baseline", "4", "--settle", "4",
    )  # fmt: skip
    assert result["crashes"] == [], [c["signature"] for c in result["crashes"]]
    counts = result["checkers"]["counts"]
    assert counts["lost"] == 0 and counts["duplicated"] == 0, result["checkers"]
    assert counts["acknowledged"] >= 20  # the workload really ran through the fuzzing
    assert result["server_errors"] == {}, result["server_errors"]
    for target, stats in result["targets"].items():
        assert stats["frames"] > 0, target
        assert stats["connections"] > 0, target
        assert stats["fuzzer_errors"] == 0, stats["findings"]
    assert set(result["targets"]) == {"tcp", "ws", "http", "raft", "grpc"}
    assert all(n["rss_kib_before"] and n["rss_kib_after"] for n in result["nodes"].values())
    assert result["valid"] and code == 0, result["failures"]
    assert "raftchat fuzz: PASS" in stdout
    assert node_processes() == []
