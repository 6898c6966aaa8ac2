"""``python -m bench.backup``: what an online backup costs (ADR "backup and restore").

Starts a fresh three-node cluster, imports ``--messages`` messages of ``--payload-bytes``
random bytes over ``--channels`` group channels, then sends one message at a time from a
thread (a steady trickle with ``--interval-ms`` between sends) while ``raftchat backup`` runs
in-process against it, and reports: the backup's time and size, the send latencies before and
during it (the pause a backup causes), and the time ``raftchat restore`` takes for each node of
a second cluster's configuration. Nothing of it runs in ``make test``.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from launcher.devcluster import (
    NodeProcess,
    cluster_env,
    ensure_ports_free,
    node_env,
    start_all,
    wait_all_stopped,
)
from node.backup_cli import take_backup
from node.config import load_config
from node.restore import restore

ADMIN = "bench-admin-token"
IMPORT_BATCH = 1000


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.backup")
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--payload-bytes", type=int, default=200)
    p.add_argument("--interval-ms", type=float, default=10.0)
    p.add_argument("--host-base", default="127.0.0.9", help="node i on <base>i (127.0.0.91..93)")
    args = p.parse_args()
    hosts = {i: f"{args.host_base}{i}" for i in (1, 2, 3)}
    ensure_ports_free(hosts, 8)
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        print(json.dumps(run(Path(tmp), hosts, args), indent=1))


def run(tmp: Path, hosts: dict[int, str], args: argparse.Namespace) -> dict[str, Any]:
    envs = cluster_env(hosts, "bench-backup-secret", {"RAFTCHAT_AUTH_ADMIN_TOKEN": ADMIN})
    nodes = []
    for i, host in hosts.items():
        data = tmp / f"node{i}"
        nodes.append(NodeProcess(i, data, node_env(i, host, data, envs[i]), tmp / f"{i}.log"))
    start_all(nodes)
    url = f"http://{hosts[1]}:5001"
    out: dict[str, Any] = {"messages": args.messages, "payload_bytes": args.payload_bytes}
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            began = time.monotonic()
            fill(http, args)
            out["import_s"] = round(time.monotonic() - began, 2)
            trickle = Trickle(url, args.interval_ms / 1000, args.channels)
            worker = threading.Thread(target=trickle.run, daemon=True)
            worker.start()
            time.sleep(3)  # a baseline of send latencies
            backup_began = time.monotonic()
            summary = take_backup([url], ADMIN, tmp / "backup", lambda _: None)
            backup_ended = time.monotonic()
            time.sleep(1)
            trickle.stop.set()
            worker.join(10)
    finally:
        wait_all_stopped(nodes)
    out["backup_s"] = round(backup_ended - backup_began, 2)
    out["backup_bytes"] = summary["bytes"]
    out["sends_before"] = latency(trickle.done, 0, backup_began)
    out["sends_during"] = latency(trickle.done, backup_began, backup_ended)
    restored = tmp / "restored"
    new_nodes = ",".join(f"{i}@127.0.0.10{i}" for i in (1, 2, 3))
    took = []
    for i in (1, 2, 3):
        env = {
            "RAFTCHAT_NODE_ID": str(i),
            "RAFTCHAT_NODE_HOST": f"127.0.0.10{i}",
            "RAFTCHAT_NODE_DATA_DIR": str(restored / f"node{i}"),
            "RAFTCHAT_CLUSTER_NODES": new_nodes,
            "RAFTCHAT_CLUSTER_PASSWORD": "bench-backup-secret",
        }
        began = time.monotonic()
        restore(tmp / "backup", load_config(env=env))
        took.append(round(time.monotonic() - began, 2))
    out["restore_s_per_node"] = took
    return out


def fill(http: httpx.Client, args: argparse.Namespace) -> None:
    rng = random.Random(7)  # random payloads: what compression cannot shrink, as real ones
    now = int(time.time())
    channels = [f"bench{c}" for c in range(args.channels)]
    for channel in channels:
        body = {"channel_id": channel, "channel_type": 2, "subscribers": ["a", "b"]}
        http.post("/channel", json=body).raise_for_status()
    n = 0
    while n < args.messages:
        count = min(IMPORT_BATCH, args.messages - n)
        channel = channels[(n // IMPORT_BATCH) % len(channels)]
        messages = [
            {
                "from_uid": "a",
                "client_msg_no": f"m{n + i}",
                "timestamp": now,
                "payload": base64.b64encode(rng.randbytes(args.payload_bytes)).decode(),
            }
            for i in range(count)
        ]
        body = {"channel_id": channel, "channel_type": 2, "messages": messages}
        http.post("/message/import", json=body).raise_for_status()
        n += count


class Trickle:
    """One send at a time, recording (sent at, acknowledged at)."""

    def __init__(self, url: str, interval_s: float, channels: int) -> None:
        self.channels = channels
        self.url = url
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.done: list[tuple[float, float]] = []

    def run(self) -> None:
        payload = base64.b64encode(b"trickle").decode()
        with httpx.Client(base_url=self.url, timeout=60) as http:
            n = 0
            while not self.stop.is_set():
                body = {
                    "from_uid": "a",
                    "channel_id": f"bench{n % self.channels}",
                    "channel_type": 2,
                    "payload": payload,
                }
                began = time.monotonic()
                http.post("/message/send", json=body).raise_for_status()
                self.done.append((began, time.monotonic()))
                n += 1
                time.sleep(self.interval_s)


def latency(done: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """Sends that overlap [start, end]: how many, and their latency in ms."""
    ms = sorted((b - a) * 1000 for a, b in done if b >= start and a <= end)
    if not ms:
        return {"sends": 0}
    return {
        "sends": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
        "max_ms": round(ms[-1], 1),
    }


if __name__ == "__main__":
    main()
