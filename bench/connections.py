"""``raftchat bench-connections``: memory per idle authenticated WKProto connection.

Starts one fresh node, measures its resident memory, opens N client connections that each log
in (CONNECT with a client key, so every session has its cipher, as real clients do) and then
sit idle, and measures again. Clients are spread over worker processes, because one process may
hold only so many open files. Token checks are off so that the run needs no N users; a session
is the same object either way. Beyond the node's capacity, further connections are closed at
once, which the run reports as refused.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from launcher.devcluster import NodeProcess, node_env
from proto.wkproto import Connack, Connect, FrameDecoder, ReasonCode, encode
from proto.wkproto.crypto import KeyPair

PER_PROCESS = 9_000
"""Connections one worker holds (each is an open file on the client side too)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connections", type=int, default=10_000, help="connections to open")
    p.add_argument("--host", default="127.0.0.61", help="the node's address (127.0.0.61)")
    p.add_argument("--json", dest="json_file", help="also write the result JSON to this file")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _worker(conn: Connection, host: str, port: int, count: int, first_uid: int) -> None:
    """Open ``count`` logged-in connections, report, then hold them until told to stop."""
    key = KeyPair().public_b64
    socks: list[socket.socket] = []
    refused = 0
    for i in range(count):
        s = socket.create_connection((host, port))
        uid = f"idle{first_uid + i}"
        frame = Connect(
            version=4,
            device_flag=1,
            device_id="d",
            uid=uid,
            token="t",
            client_timestamp=0,
            client_key=key,
        )
        s.sendall(encode(frame, 4))
        decoder = FrameDecoder()
        decoder.version = 4
        ack = None
        while ack is None:
            data = s.recv(4096)
            if not data:
                break
            decoder.feed(data)
            ack = decoder.next_frame()
        if isinstance(ack, Connack) and ack.reason_code == ReasonCode.SUCCESS:
            socks.append(s)
        else:
            refused += 1
            s.close()
    conn.send({"open": len(socks), "refused": refused})
    conn.recv()  # stop
    for s in socks:
        s.close()


def measure(connections: int, host: str) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="raftchat-connbench-"))
    env = node_env(
        1,
        host,
        root / "node1",
        {"RAFTCHAT_AUTH_TOKEN_AUTH": "false", "RAFTCHAT_LOG_LEVEL": "warning"},
    )
    node = NodeProcess(node_id=1, data_dir=root / "node1", env=env, log_path=root / "node1.log")
    node.start()
    assert node.proc is not None
    pid = node.proc.pid
    try:
        time.sleep(2)  # let start-up allocations settle before the baseline
        before = rss_kib(pid)
        workers = []
        left, first = connections, 0
        while left > 0:
            n = min(left, PER_PROCESS)
            parent, child = multiprocessing.Pipe()
            proc = multiprocessing.Process(target=_worker, args=(child, host, 5100, n, first))
            proc.start()
            workers.append((proc, parent))
            left -= n
            first += n
        counts = [parent.recv() for _, parent in workers]
        opened = sum(c["open"] for c in counts)
        refused = sum(c["refused"] for c in counts)
        time.sleep(2)  # idle: nothing but the sessions themselves
        after = rss_kib(pid)
        fds = open_files(pid)
        alive = node.running
        for proc, parent in workers:
            parent.send("stop")
            proc.join()
    finally:
        node.stop()
    return {
        "connections_asked": connections,
        "connections_open": opened,
        "refused": refused,
        "node_rss_before_kib": before,
        "node_rss_after_kib": after,
        "kib_per_connection": round((after - before) / opened, 2) if opened else None,
        "node_open_files": fds,
        "node_alive": alive,
    }


def run(args: argparse.Namespace) -> int:
    result = measure(args.connections, args.host)
    print(json.dumps(result, indent=2))
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["node_alive"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raftchat bench-connections")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
