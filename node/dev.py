"""``raftchat dev``: a local cluster for trying raftchat by hand.

Node i listens on 127.0.0.1{i} (127.0.0.11, .12, ...) with the standard ports, so every node
looks like a machine of its own. A single node uses 127.0.0.1. The cluster password is made once
and kept in the data directory, so a restarted dev cluster keeps its data.
"""

from __future__ import annotations

import secrets
import signal
import sys
import threading
from pathlib import Path

from .devcluster import (
    NodeProcess,
    NodeStartError,
    cluster_env,
    node_env,
    start_all,
    wait_all_stopped,
)

MAX_DEV_NODES = 9


def dev_hosts(nodes: int) -> dict[int, str]:
    if nodes == 1:
        return {1: "127.0.0.1"}
    return {i: f"127.0.0.{10 + i}" for i in range(1, nodes + 1)}


def dev_password(root: Path) -> str:
    path = root / "cluster.secret"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def run_dev(nodes: int, data_dir: str, config_path: str | None) -> int:
    if not 1 <= nodes <= MAX_DEV_NODES:
        print(f"raftchat dev: --nodes must be 1..{MAX_DEV_NODES}", file=sys.stderr)
        return 2
    root = Path(data_dir).resolve()
    hosts = dev_hosts(nodes)
    envs: dict[int, dict[str, str]] = (
        cluster_env(hosts, dev_password(root)) if nodes > 1 else {1: {}}
    )
    envs[1]["RAFTCHAT_HTTP_ALSO_HOST"] = "127.0.0.1"
    procs = [
        NodeProcess(
            node_id=i,
            data_dir=root / f"node{i}",
            env=node_env(i, hosts[i], root / f"node{i}", envs[i]),
            log_path=root / f"node{i}.log",
            config_path=config_path,
        )
        for i in sorted(hosts)
    ]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        start_all(procs)
    except NodeStartError as e:
        print(f"raftchat dev: {e}", file=sys.stderr)
        return 1
    print(f"raftchat dev: {nodes} node(s) ready (data and logs in {root})")
    for p in procs:
        ep = p.endpoints
        wss = f"  WSS {ep['wss']}" if "wss" in ep else ""  # with tls.cert_file (--config)
        print(
            f"  node {ep['node_id']}: HTTP {ep['http']}  TCP {ep['tcp']}  WS {ep['ws']}{wss}"
            f"  gRPC {ep['grpc']}"
        )
    print("Ctrl-C stops the cluster.", flush=True)
    try:
        while not stop.wait(0.5):
            if not all(p.running for p in procs):
                print("raftchat dev: a node exited; see its log", file=sys.stderr)
                break
    except KeyboardInterrupt:
        pass
    finally:
        wait_all_stopped(procs)
    print("raftchat dev: stopped")
    return 0
