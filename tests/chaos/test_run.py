"""Whole chaos runs with real node processes: the quick preset passes, a sabotaged server fails
with the property it breaks named, and an interrupted run leaves no rule and no process."""

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

from chaos import net
from launcher.devcluster import SLOT_GROUPS

REPO = Path(__file__).resolve().parents[2]
# Outside the 127.0.20-219.x range tests/conftest.py hands out, so runs never collide with it.
HOST_BASE = "127.0.252"


def chaos_run(out: Path, *args: str, timeout_s: float = 280.0) -> tuple[int, dict[str, Any]]:
    cmd = [sys.executable, "-m", "node.cli", "chaos", "run", "--out", str(out)]
    cmd += ["--host-base", HOST_BASE, *args]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    runners.append(proc.pid)
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the runner then removes its rules and stops its nodes.
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
        pytest.fail(f"the chaos run took over {timeout_s} s:\n{stderr[-3000:]}")
    runs = sorted(out.iterdir())
    assert len(runs) == 1, stderr[-3000:]
    verdict_path = runs[0] / "verdict.json"
    assert verdict_path.exists(), stderr[-3000:]
    return proc.returncode, json.loads(verdict_path.read_text())


def node_processes() -> list[int]:
    """Pids of node processes on this test's addresses (scanned from /proc)."""
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


runners: list[int] = []
"""Pids of the runner processes this module started: their chains carry them."""


def chains_of(pid: int) -> list[str]:
    return [c for c in net.our_chains() if net.chain_pid(c) == pid]


def assert_clean() -> None:
    """The runs of this test left no chain (other runs on this machine may have theirs) and no
    node process."""
    for pid in runners:
        assert chains_of(pid) == []
    assert node_processes() == []


@pytest.fixture(autouse=True)
def needs_iptables() -> Iterator[None]:
    why = net.problem()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to run the chaos suite: {why}")
        pytest.skip(why)
    runners.clear()
    yield
    # Whatever a failed test left behind must not break the next one.
    for pid in node_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    net.remove_stale()


@pytest.mark.timeout(300)
def test_quick_run_holds_every_property(tmp_path: Path) -> None:
    code, verdict = chaos_run(tmp_path, "--quick", "--seed", "11")
    failed, missing, unchecked = verdict["failed"], verdict["missing"], verdict["unchecked"]
    assert code == 0 and verdict["valid"], f"failed: {failed}, no data: {missing}, {unchecked}"
    assert verdict["status"] == "valid"
    results = verdict["results"]
    for name in verdict["required"]:  # every safety property had data and held
        assert results[name]["status"] == "valid", name
    meta = verdict["meta"]
    assert meta["faults"]["faults"] >= 5  # the nemesis really did something
    assert meta["counts"]["acked_sends"] >= 100
    lost = results["lost_acked"]["counts"]
    assert lost["final_reads"] >= meta["channels"] * 3  # every channel read from every node
    assert results["replica_divergence"]["counts"]["groups_compared"] == SLOT_GROUPS
    floors = results["read_floor_regression"]["counts"]
    assert floors["observations"] > 0 and floors["user_channels"] > 0
    assert floors["floor_lower_bounds"] > 0  # own sends and completed clearUnreads
    run = next(tmp_path.iterdir())
    # "hosts" lists every node the run launched, the ones that joined during it included.
    joined = {
        line["value"]["targets"][0]
        for line in map(json.loads, (run / "history.jsonl").read_text().splitlines())
        if line["f"] == "nemesis"
        and line["type"] == "ok"
        and line["value"]["fault"] == "join"
        and line["value"]["action"] == "start"
    }
    # (Whether a join completes within the minute depends on the faults around it; when one
    # did, its node must be listed.)
    assert joined | {str(n) for n in meta["members_at_end"]} <= set(meta["hosts"])
    assert (run / "report.html").stat().st_size > 1000
    assert any((run / "nodes").glob("node*.log"))
    assert_clean()


@pytest.mark.timeout(240)
def test_quick_flood_run_checks_thousands_of_messages(tmp_path: Path) -> None:
    """The flood workload under every nemesis: valid, every flood property with data, and
    more acknowledged messages in 30 s than the chat workload's quick run makes in 60 s
    (about 300-500) by an order of magnitude."""
    code, verdict = chaos_run(
        tmp_path, "--quick", "--workload", "flood", "--time", "30", "--seed", "13",
        timeout_s=220.0,
    )  # fmt: skip
    failed, missing, unchecked = verdict["failed"], verdict["missing"], verdict["unchecked"]
    assert code == 0 and verdict["status"] == "valid", f"{failed}, no data: {missing}, {unchecked}"
    results = verdict["results"]
    assert set(verdict["required"]) == set(results)
    for name in verdict["required"]:
        assert results[name]["status"] == "valid", name
    meta = verdict["meta"]
    assert meta["faults"]["faults"] >= 3
    assert meta["counts"]["acked_sends"] >= 3000
    lost = results["lost_acked"]["counts"]
    assert lost["final_reads"] >= meta["channels"] * 3  # every channel from every node
    assert lost["final_read_messages"] >= 3 * lost["acked"]
    assert results["nonmonotonic_delivery"]["counts"]["recvs"] > 0
    assert results["replica_divergence"]["counts"]["groups_compared"] == SLOT_GROUPS
    assert meta["flood"]["workers"]["sessions_opened"] >= 48
    run = next(tmp_path.iterdir())
    assert sorted(p.name for p in (run / "flood").glob("final-n*.bin"))
    assert_clean()


@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    ("mode", "broken"),
    [("ack-without-commit", "lost_acked"), ("skip-dedupe", "duplicates")],
)
def test_sabotaged_server_fails_the_run(tmp_path: Path, mode: str, broken: str) -> None:
    # 5 s, then the 10 s the workload goes on after the heal: 15 s of sends.
    code, verdict = chaos_run(
        tmp_path, "--nodes", "3", "--time", "5", "--nemesis", "none", "--seed", "5",
        "--sabotage", mode, timeout_s=180.0,
    )  # fmt: skip
    assert code == 1 and not verdict["valid"]
    assert broken in verdict["failed"]
    assert verdict["results"][broken]["examples"]
    assert_clean()


@pytest.mark.timeout(200)
def test_interrupted_run_removes_its_rules_and_processes(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "node.cli", "chaos", "run", "--out", str(tmp_path)]
    cmd += ["--host-base", HOST_BASE, "--nodes", "3", "--time", "120", "--nemesis", "partition"]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if "workload running" in line:
                break
        else:
            pytest.fail("the run never got to its workload")
        runners.append(proc.pid)
        assert len(chains_of(proc.pid)) == 2  # its own chains, installed while running
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)  # drains stderr while the runner cleans up
        assert proc.returncode == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_clean()
