"""A node process in JSON log format: grpc's C-core lines, libraries' Python log records and
anything else written to fd 2 come out as JSON records."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

from node.native_stderr import records_of

ROOT = Path(__file__).resolve().parents[2]

GOAWAY = (
    "E1207 13:13:35.537081   18340 chttp2_transport.cc:1435] ipv4:127.0.0.1:33827: Received a "
    'GOAWAY with error code ENHANCE_YOUR_CALM and debug data equal to "too_many_pings". Current '
    "keepalive time (before throttling): 100ms"
)


def test_grpc_line_keeps_level_source_and_message() -> None:
    (rec,) = records_of([GOAWAY])
    assert rec.component == "grpc"
    assert rec.level == logging.ERROR
    assert rec.fields == {"source": "chttp2_transport.cc:1435"}
    assert rec.msg.startswith("ipv4:127.0.0.1:33827: Received a GOAWAY")
    assert '"too_many_pings"' in rec.msg


def test_grpc_levels_and_absl_preamble() -> None:
    recs = records_of(
        [
            "WARNING: All log messages before absl::InitializeLog() is called are written to "
            "STDERR",
            "I0000 00:00:1765112000.123456    4242 ev_epoll1_linux.cc:359] using polling engine",
            "W1207 13:13:22.387746   17803 log.cc:110] Log level DEBUG is not suitable",
        ]
    )
    assert [(r.component, r.level) for r in recs] == [
        ("grpc", logging.INFO),
        ("grpc", logging.INFO),
        ("grpc", logging.WARNING),
    ]
    assert recs[1].fields == {"source": "ev_epoll1_linux.cc:359"}


def test_a_traceback_is_one_record_other_lines_one_each() -> None:
    traceback = [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "RuntimeError: boom",
    ]
    recs = records_of(
        ["before", *traceback, GOAWAY, "raftchat: node stopped", "", *traceback, "after"]
    )
    assert [(r.component, r.msg) for r in recs] == [
        ("stderr", "before"),
        ("stderr", "\n".join(traceback)),
        ("grpc", GOAWAY.split("] ", 1)[1]),
        ("stderr", "raftchat: node stopped"),
        ("stderr", "\n".join(traceback)),
        ("stderr", "after"),
    ]
    assert recs[1].level == logging.WARNING


def test_a_process_in_json_format_writes_json_lines_only() -> None:
    """Through a real fd 2: the C core's writes (fifty alike, rate-limited to one line), a
    library's Python logger, a bare print and an uncaught exception at exit."""
    script = textwrap.dedent(
        f"""
        import logging, os, sys
        from node.log import get_logger, setup_logging
        setup_logging(4, "info", "json", whole_process=True)
        get_logger("app").info("started")
        for _ in range(50):  # a peer's bad requests, one C-core line each
            os.write(2, {(GOAWAY + chr(10)).encode()!r})
        logging.getLogger("grpc._server").warning("Exception calling application")
        print("raftchat: node stopped", file=sys.stderr)
        raise RuntimeError("boom")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    records = [json.loads(line) for line in done.stderr.splitlines()]  # each line is JSON
    assert all(r["node"] == 4 for r in records)
    by_component = {(r["component"], r["level"]): r for r in records}
    assert by_component[("app", "info")]["msg"] == "started"
    goaway = next(r for r in records if r["component"] == "grpc")
    # At most one line per source position and interval: the rest is counted, not written,
    # and the count is written at exit.
    grpc_lines = [r for r in records if r["component"] == "grpc"]
    assert len(grpc_lines) == 2, grpc_lines
    assert grpc_lines[1]["held_back"] == 49 and grpc_lines[1]["msg"].startswith("49 more from")
    assert "too_many_pings" in goaway["msg"]
    assert goaway["source"] == "chttp2_transport.cc:1435"
    assert by_component[("grpc._server", "warning")]["msg"] == "Exception calling application"
    stderr_msgs = [r["msg"] for r in records if r["component"] == "stderr"]
    assert "raftchat: node stopped" in stderr_msgs
    assert any("RuntimeError: boom" in m and "Traceback" in m for m in stderr_msgs)
