"""Start and stop local node processes: used by ``raftchat dev``, the tests and the bench.

Each node is a real ``raftchat node`` process with its settings in ``RAFTCHAT_*`` variables.
Readiness is the ``RAFTCHAT_READY {json}`` line a node prints once every listener is bound and
it is ready as ``GET /readyz`` says (``node/readiness.py``), so callers wait for an event rather
than polling or sleeping.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

READY_PREFIX = "RAFTCHAT_READY "

# The standard ports of a node (``docs/configuration.md``); each node has its own address.
HTTP_PORT = 5001
TCP_PORT = 5100
WS_PORT = 5200
GRPC_PORT = 11110
"""The peer gRPC port (``cluster.grpc_port``)."""
PUBLIC_GRPC_PORT = 5002
"""The public gRPC API (``grpc.port``)."""
RAFT_PORT = 12000
SLOT_GROUPS = 3
"""The default ``cluster.groups``: the controller group and these listen on ``RAFT_PORT + g``."""
CONSOLE_PORT = 5300
"""The web console (``console.port``)."""


class NodeStartError(Exception):
    pass


@dataclass
class NodeProcess:
    node_id: int
    data_dir: Path
    env: dict[str, str]
    log_path: Path
    config_path: str | None = None
    gid: int | None = None
    """Run the process with this primary group id (the chaos suite's partitions match on it)."""
    proc: subprocess.Popen[str] | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    _ready: _ReadyWatch = field(init=False, repr=False)

    def start(self, timeout_s: float = 30.0) -> None:
        self.launch()
        self.wait_ready(timeout_s)

    def launch(self) -> None:
        """Start the process without waiting: cluster members must start together, because a
        node is ready only once its slot groups have elected leaders."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")  # noqa: SIM115 - owned by the child's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node"]
            + (["--config", self.config_path] if self.config_path else []),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=str(Path(__file__).resolve().parent.parent),
            group=self.gid,
            extra_groups=None if self.gid is None else [],
        )
        log.close()
        assert self.proc.stdout is not None
        self._ready = _ReadyWatch(self.proc.stdout)

    def ready_within(self, timeout_s: float) -> bool:
        """Wait for the ready line without giving up on the process (it may be in a partition
        where its groups cannot elect leaders yet); False when it did not come in time."""
        found = self._ready.wait(timeout_s)
        if found is not None:
            self.endpoints = found
        return found is not None

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        if not self.ready_within(timeout_s):
            self.stop()
            tail = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
            raise NodeStartError(f"node {self.node_id} did not become ready:\n{tail}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        if self.signal(sig):
            self.wait_stopped(timeout_s)

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to a running process (resumed first, unless ``sig`` is SIGKILL: a paused
        process cannot act on a signal); False when there is no process to signal."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        if sig != signal.SIGKILL:
            self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(sig)
        return True

    def wait_stopped(self, timeout_s: float = 10.0) -> None:
        """Wait for the process to exit; kill it when it takes longer than ``timeout_s``."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class _ReadyWatch:
    """Reads a child's stdout until its ready line, and keeps draining it afterwards."""

    def __init__(self, stdout: IO[str]) -> None:
        self._found: list[dict[str, str]] = []
        self._done = threading.Event()
        self._stdout = stdout
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self._stdout:
            if not self._found and line.startswith(READY_PREFIX):
                self._found.append(json.loads(line[len(READY_PREFIX) :]))
                self._done.set()
        self._done.set()  # the process ended

    def wait(self, timeout_s: float) -> dict[str, str] | None:
        self._done.wait(timeout_s)
        return self._found[0] if self._found else None


def node_env(
    node_id: int,
    host: str,
    data_dir: Path,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTCHAT_")}
    env.update(
        {
            "RAFTCHAT_NODE_ID": str(node_id),
            "RAFTCHAT_NODE_HOST": host,
            "RAFTCHAT_NODE_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def cluster_env(
    hosts: dict[int, str],
    password: str,
    extra: dict[str, str] | None = None,
    zones: dict[int, str] | None = None,
) -> dict[int, dict[str, str]]:
    """Environment of every member of a local cluster (``hosts``: node id -> address; ``zones``:
    node id -> zone, for the nodes that have one, in ``cluster.nodes`` and ``node.zone``)."""
    zones = zones or {}
    members = ",".join(
        f"{n}@{h}" + (f"#{zones[n]}" if zones.get(n) else "") for n, h in sorted(hosts.items())
    )
    out = {}
    for node_id in hosts:
        settings = {"RAFTCHAT_CLUSTER_NODES": members, "RAFTCHAT_CLUSTER_PASSWORD": password}
        if zones.get(node_id):
            settings["RAFTCHAT_NODE_ZONE"] = zones[node_id]
        settings.update(extra or {})
        out[node_id] = settings
    return out


def start_all(nodes: list[NodeProcess], timeout_s: float = 60.0) -> None:
    """Launch every node, then wait for each to be ready; stop them all on failure."""
    try:
        for n in nodes:
            n.launch()
        for n in nodes:
            n.wait_ready(timeout_s)
    except BaseException:
        wait_all_stopped(nodes)
        raise


def wait_all_stopped(nodes: list[NodeProcess], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    for n in nodes:
        n.stop(timeout_s=max(deadline - time.monotonic(), 0.1))


def stop_all_now(nodes: list[NodeProcess], timeout_s: float = 10.0) -> None:
    """Stop every node without a drain: SIGINT to all of them at once, then wait for each.

    For nodes whose clients are done (a test's cluster after the test): SIGTERM one by one
    (``wait_all_stopped``) drains each node in turn, and the later ones spend up to
    ``ANNOUNCE_RETRY_S`` (``node/drain.py``) telling members already gone that they drain,
    some 6 s for three nodes where this takes well under 1 s."""
    signalled = [n for n in nodes if n.signal(signal.SIGINT)]
    deadline = time.monotonic() + timeout_s
    for n in signalled:
        n.wait_stopped(max(deadline - time.monotonic(), 0.1))


def ensure_ports_free(hosts: dict[int, str], groups: int) -> None:
    """Refuse to start when another local cluster holds the ports of these addresses."""
    # Raft: the controller group (0) and every slot group g on RAFT_PORT + g.
    listeners = [HTTP_PORT, TCP_PORT, WS_PORT, PUBLIC_GRPC_PORT, GRPC_PORT, CONSOLE_PORT]
    ports = listeners + [RAFT_PORT + g for g in range(groups + 1)]
    taken = []
    for host in hosts.values():
        for port in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                # As the servers do: a lingering TIME_WAIT is no reason to refuse, a listener is.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError as e:
                    if e.errno == errno.EADDRNOTAVAIL:
                        raise NodeStartError(f"cannot bind {host}: {e}") from None
                    taken.append(f"{host}:{port}")
    if taken:
        raise NodeStartError(
            f"ports in use: {', '.join(taken[:6])}{' ...' if len(taken) > 6 else ''}; "
            "is a `make run` (raftchat dev), a bench or a chaos run using these addresses? "
            "Stop it, or pick other addresses with --host-base"
        )
