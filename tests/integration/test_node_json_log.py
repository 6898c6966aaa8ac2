"""A real node in JSON log format: every line of its log is JSON, grpc's C core's own lines
included (at GRPC_VERBOSITY=INFO the core writes one as soon as the node starts)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from launcher.devcluster import NodeProcess, node_env
from tests.conftest import fresh_host


def test_grpc_core_lines_become_json_records(tmp_path: Path) -> None:
    host = fresh_host()
    data = tmp_path / "node1"
    extra = {"RAFTCHAT_LOG_FORMAT": "json", "GRPC_VERBOSITY": "INFO"}
    node = NodeProcess(1, data, node_env(1, host, data, extra), tmp_path / "node1.log")
    node.start()
    node.stop()
    assert node.proc is not None and node.proc.returncode == 0
    lines = node.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all(r["node"] == 1 for r in records)
    grpc = [r for r in records if r["component"] == "grpc"]
    assert any("Log level INFO is not suitable" in r["msg"] for r in grpc), grpc
    assert all(re.fullmatch(r"[\w./-]+:\d+", r["source"]) for r in grpc if "source" in r), grpc
    assert (records[-1]["component"], records[-1]["msg"]) == ("node", "node stopped")
