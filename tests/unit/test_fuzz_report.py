"""How the live fuzzer reads answers, crashes and probes, and when it calls a run failed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chaos.fuzz.answers import H2Answers, HttpAnswers, WsAnswers
from chaos.fuzz.report import (
    STALL_S,
    Window,
    judge,
    log_errors,
    probe_stalls,
    server_errors,
    suspects,
)
from chaos.fuzz.rpc import GOAWAY, h2_frame
from chaos.fuzz.watch import Crash, Probe, crash_signature
from proto.wkproto import Connack, Pong, Sendack, encode


def test_http_answers_pair_a_500_with_the_request_that_got_it() -> None:
    sent = [b"GET /a HTTP/1.1\r\n\r\n", b"POST /b HTTP/1.1\r\n\r\n{[", b"GET /c HTTP/1.1\r\n\r\n"]
    a = HttpAnswers(sent)
    stream = (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
        b'HTTP/1.1 500 Internal Server Error\r\ncontent-length: 14\r\n\r\n{"msg":"oops"}'
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
    )
    for i in range(0, len(stream), 7):  # answers arrive in pieces
        a.feed(stream[i : i + 7])
    assert a.counts == {"http:200": 1, "http:500": 1, "http:503": 1}
    assert len(a.findings) == 1
    assert a.findings[0]["request"].startswith("POST /b")


def test_h2_answers_count_frames_and_error_codes() -> None:
    a = H2Answers()
    goaway = h2_frame(GOAWAY, 0, 0, (5).to_bytes(4, "big") + (2).to_bytes(4, "big"))
    a.feed(h2_frame(4, 0, 0, b"") + goaway[:5])
    a.feed(goaway[5:])
    assert a.counts["h2:SETTINGS"] == 1 and a.counts["goaway:INTERNAL_ERROR"] == 1
    assert a.findings == [{"kind": "h2_goaway_internal_error"}]


def test_ws_answers_read_the_upgrade_closes_and_wkproto_inside() -> None:
    a = WsAnswers()
    connack = encode(Connack(0, 1, node_id=1, server_version=6))
    sendack = encode(Sendack(1, 1, 1, 15), 6)
    body = connack + sendack + encode(Pong())
    a.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    a.feed(bytes([0x82, len(body)]) + body + b"\x88\x02\x03\xf3")
    assert a.counts["upgrade:101"] == 1
    assert a.counts["connack:SUCCESS"] == 1 and a.counts["pong"] == 1
    assert a.counts["sendack:SYSTEM_ERROR"] == 1 and a.counts["ws_close:1011"] == 1


def test_crash_signatures_group_one_cause() -> None:
    a = crash_signature(
        ["boom", "  | wsproto.utilities.LocalProtocolError: Event Pong(payload=b'\\x01') in 3"]
    )
    b = crash_signature(
        ["x", "wsproto.utilities.LocalProtocolError: Event Pong(payload=b'zz') in 4"]
    )
    assert a == b == "wsproto.utilities.LocalProtocolError: Event Pong(payload=…) in N"
    assert crash_signature(["nothing here"]) == "(no exception in the log)"
    # A node in JSON log format: the traceback is one record of its stderr.
    record = {
        "component": "stderr",
        "msg": 'Traceback (most recent call last):\n  File "x.py", line 3\n'
        "KeyError: 'channel-42'",
    }
    assert crash_signature([json.dumps(record), '{"msg": "node stopped"}']) == "KeyError: …"


def test_stalls_count_late_and_unanswered_probes_of_running_nodes_only() -> None:
    w = Window(10.0, 20.0)
    probes = [
        Probe(1, 5.0, 0.01, True),
        Probe(1, 12.0, STALL_S + 0.5, True),
        Probe(1, 13.0, None, True),  # timed out while the node ran: a stall
        Probe(1, 14.0, None, False),  # the node was down: not a stall
        Probe(1, 25.0, 0.02, True),
    ]
    got = probe_stalls(probes, w)["1"]
    assert got["before"]["stalls"] == 0
    assert got["during"]["stalls"] == 2 and got["during"]["probes"] == 3
    assert got["after"]["stalls"] == 0


def _result(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "crashes": [],
        "checkers": {"valid": True, "failed": []},
        "server_errors": {},
        "healthy_after": True,
    }
    base.update(changes)
    return base


def test_judge_fails_on_crashes_checkers_server_errors_and_an_unhealthy_end() -> None:
    assert judge(_result()) == []
    assert judge(_result(crashes=[{"signature": "E"}]))[0].startswith("1 node crash")
    assert judge(_result(checkers={"valid": False, "failed": ["lost_acked"]}))
    assert judge(_result(server_errors={"http:500": 2}))
    assert judge(_result(healthy_after=False))
    assert judge(_result(replicas_converged=False))
    assert judge(_result(log_errors={"2": {"lines": 3, "critical": 0}})) == []
    why = judge(_result(log_errors={"2": {"lines": 3, "critical": 1}}))
    assert why == ["1 CRITICAL log line(s): a replica diverged, or worse"]


def test_log_errors_count_critical_lines_apart(tmp_path: Path) -> None:
    log = tmp_path / "node1.log"
    log.write_text(
        '{"level": "error", "msg": "a"}\n'
        '{"level": "critical", "msg": "raft replica diverged"}\n'
        '{"level": "info", "msg": "b"}\n'
    )
    row = log_errors({1: log})["1"]
    assert row["lines"] == 2 and row["critical"] == 1


def test_server_errors_are_5xx_but_503_and_internal_statuses() -> None:
    targets = {
        "http": {"answers": {"http:500": 2, "http:503": 7, "http:400": 9}},
        "grpc": {"answers": {"grpc:INTERNAL": 1, "grpc:UNAVAILABLE": 4, "goaway:NO_ERROR": 1}},
        "tcp": {"answers": {"sendack:SYSTEM_ERROR": 3, "sendack:MSG_KEY_ERROR": 5}},
    }
    assert server_errors(targets) == {"http:500": 2, "grpc:INTERNAL": 1, "sendack:SYSTEM_ERROR": 3}


def test_suspects_are_the_crashed_nodes_recent_connections(tmp_path: Path) -> None:
    log = tmp_path / "scenarios.tsv"
    log.write_text(
        "80.0\tws\t1\t2\t5200\tsession\n"  # too early
        "95.0\ttcp\t7\t1\t5100\tsession\n"  # another node
        "96.0\tws\t8\t2\t5200\tclose_race\n"
        "97.0\tgrpc-call\t3\t2\t11110\tgrpcio\n"
        "99.5\tws\t9\t2\t5200\tsession\n"
        "101.0\tws\t10\t2\t5200\tsession\n"  # after the crash
    )
    crash = Crash(node=2, mono=100.0, wall=0.0, exit_code=1, signature="E", log_tail=[])
    got = suspects(log, crash, seed=7)
    assert [c["replay"] for c in got["connections"]] == ["ws:9", "grpc-call:3", "ws:8"]
    assert got["replay"] == "raftchat fuzz --seed 7 --replay ws:8,grpc-call:3,ws:9"
