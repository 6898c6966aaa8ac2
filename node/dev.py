"""``raftchat dev``: a local cluster for trying raftchat by hand."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from .devcluster import NodeProcess, NodeStartError, node_env, wait_all_stopped


def run_dev(nodes: int, data_dir: str, config_path: str | None) -> int:
    if nodes != 1:
        # Several nodes need the Raft cluster layer (issue 3); until then say so plainly.
        print("raftchat dev: only --nodes 1 is supported until clustering lands", file=sys.stderr)
        return 2
    root = Path(data_dir).resolve()
    procs = [
        NodeProcess(
            node_id=i,
            data_dir=root / f"node{i}",
            env=node_env(i, "127.0.0.1", root / f"node{i}"),
            log_path=root / f"node{i}.log",
            config_path=config_path,
        )
        for i in range(1, nodes + 1)
    ]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for p in procs:
            p.start()
    except NodeStartError as e:
        print(f"raftchat dev: {e}", file=sys.stderr)
        wait_all_stopped(procs)
        return 1
    print(f"raftchat dev: {nodes} node(s) ready (logs in {root})")
    for p in procs:
        ep = p.endpoints
        print(f"  node {ep['node_id']}: HTTP {ep['http']}  TCP {ep['tcp']}  WS {ep['ws']}")
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
