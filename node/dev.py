"""``raftchat dev``: a local cluster for trying raftchat by hand.

Node i listens on 127.0.0.1{i} (127.0.0.11, .12, ...) with the standard ports, so every node
looks like a machine of its own. A single node uses 127.0.0.1. ``--host-base A.B.C`` puts node
i on A.B.C.1{i} instead (the tests' dev cluster does, beside a developer's ``make run``).
``--zones m1,m1,m2`` gives node i the i-th zone (in ``cluster.nodes`` and ``node.zone``), as if
nodes 1 and 2 shared a machine.
A node that exits is named with its exit status and started again (``node/devsupervisor.py``).

The cluster password and the two API credentials (``auth.api_token``, ``auth.admin_token``) are
made once and kept in the data directory (``cluster.secret``, ``api.token``, ``admin.token``,
each 0600), so a restarted dev cluster keeps its data and its credentials; they are printed with
commands that use them.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from client.defaults import DEFAULT_HTTP_URL, DEFAULT_TCP_ADDR
from cluster.placement import zone_problem
from launcher.devcluster import (
    NodeProcess,
    NodeStartError,
    cluster_env,
    node_env,
    start_all,
    wait_all_stopped,
)

from .devsupervisor import Supervisor

MAX_DEV_NODES = 9
SUPERVISE_INTERVAL_S = 0.2
"""How soon ``raftchat dev`` notices that a node exited."""
DEFAULT_DATA = "./data"
"""``raftchat dev``'s and ``make run``'s data directory, where the client commands look for
the token files when no node address is given (``client/credentials.py``)."""


DEFAULT_HOST_BASE = "127.0.0"


def dev_hosts(nodes: int, host_base: str = DEFAULT_HOST_BASE) -> dict[int, str]:
    if nodes == 1 and host_base == DEFAULT_HOST_BASE:
        return {1: "127.0.0.1"}
    return {i: f"{host_base}.{10 + i}" for i in range(1, nodes + 1)}


def dev_zones(text: str, nodes: int) -> dict[int, str]:
    """``--zones m1,m1,m2``: the zone of node 1, 2, ... (empty: none). ValueError: why not."""
    if not text.strip():
        return {}
    names = [name.strip() for name in text.split(",")]
    if len(names) != nodes:
        raise ValueError(f"--zones names {len(names)} zone(s) for {nodes} node(s)")
    for name in names:
        problem = zone_problem(name)
        if problem is not None or not name:
            raise ValueError(f"--zones: {problem or 'an empty zone'}")
    return dict(enumerate(names, start=1))


PASSWORD_FILE = "cluster.secret"
API_TOKEN_FILE = "api.token"
ADMIN_TOKEN_FILE = "admin.token"


def dev_secret(root: Path, name: str) -> str:
    """The secret kept in ``root/name``, made (0600, never another mode even for a moment)
    if it is not there yet."""
    path = root / name
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def dev_password(root: Path) -> str:
    return dev_secret(root, PASSWORD_FILE)


def dev_tokens(root: Path) -> dict[str, str]:
    """The nodes' settings for the API and admin tokens of the dev cluster in ``root``."""
    return {
        "RAFTCHAT_AUTH_API_TOKEN": dev_secret(root, API_TOKEN_FILE),
        "RAFTCHAT_AUTH_ADMIN_TOKEN": dev_secret(root, ADMIN_TOKEN_FILE),
    }


def usage(
    data_dir: str,
    tokens: dict[str, str],
    node1: Mapping[str, str] | None = None,
    also_local: bool = True,
) -> str:
    """The credentials and commands that use them, with the data directory as given, for the
    cluster whose node 1 has the endpoints ``node1`` (its ``RAFTCHAT_READY`` line; the
    standard ones by default): a base config may move the ports, one node is on 127.0.0.1.
    ``also_local``: node 1's API answers on 127.0.0.1 too (``http.also_host``)."""
    where = data_dir.rstrip("/") or "."
    api, admin = f"{where}/{API_TOKEN_FILE}", f"{where}/{ADMIN_TOKEN_FILE}"
    http = (node1 or {}).get("http", DEFAULT_HTTP_URL)
    tcp = (node1 or {}).get("tcp", DEFAULT_TCP_ADDR)
    # Node 1 answers on 127.0.0.1 too (also_host) where the default addresses are used.
    local = f"http://127.0.0.1:{urlsplit(http).port}" if also_local else http
    # The client commands go to node 1 of the standard cluster by default, and then read
    # ./data's token files by themselves (docs/client.md); named addresses need the tokens.
    standard = http == DEFAULT_HTTP_URL and tcp == DEFAULT_TCP_ADDR
    own_files = standard and where == DEFAULT_DATA
    return "\n".join(
        [
            f"API token (auth.api_token, in {api}): {tokens['RAFTCHAT_AUTH_API_TOKEN']}",
            f"admin token (auth.admin_token, in {admin}): {tokens['RAFTCHAT_AUTH_ADMIN_TOKEN']}",
            "Try:",
            f'  curl -H "token: $(cat {api})" -X POST {local}/user/token '
            """-d '{"uid":"alice","token":"secret","device_flag":1}'""",
            f'  curl -H "token: $(cat {admin})" {local}/cluster/status',
            *(
                [f"  the web console: {node1['console']} (log in with the admin token)"]
                if node1 and "console" in node1
                else []
            ),
            ("" if own_files else f"  RAFTCHAT_AUTH_ADMIN_TOKEN=$(cat {admin})")
            + "  .venv/bin/raftchat cluster status"
            + ("" if standard else f" --api {http}"),
            ("" if own_files else f"  RAFTCHAT_AUTH_API_TOKEN=$(cat {api})")
            + "  .venv/bin/raftchat chat --uid alice --to bob"
            + ("" if standard else f" --node {tcp} --http {http}"),
        ]
    )


def run_dev(
    nodes: int,
    data_dir: str,
    config_path: str | None,
    host_base: str = DEFAULT_HOST_BASE,
    zones: str = "",
) -> int:
    if not 1 <= nodes <= MAX_DEV_NODES:
        print(f"raftchat dev: --nodes must be 1..{MAX_DEV_NODES}", file=sys.stderr)
        return 2
    try:
        zone_of = dev_zones(zones, nodes)
    except ValueError as e:
        print(f"raftchat dev: {e}", file=sys.stderr)
        return 2
    os.umask(0o077)  # the data directory and everything in it: this user's alone
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    hosts = dev_hosts(nodes, host_base)
    tokens = dev_tokens(root)
    envs: dict[int, dict[str, str]] = (
        cluster_env(hosts, dev_password(root), tokens, zone_of)
        if nodes > 1
        else {1: {**tokens, **({"RAFTCHAT_NODE_ZONE": zone_of[1]} if zone_of else {})}}
    )
    if host_base == DEFAULT_HOST_BASE:
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
    # Ctrl-C reaches the nodes too (one process group): it must not look like nodes dying.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        start_all(procs)
    except NodeStartError as e:
        print(f"raftchat dev: {e}", file=sys.stderr)
        return 1
    print(f"raftchat dev: {nodes} node(s) ready (data and logs in {root})")
    for p in procs:
        ep = p.endpoints
        wss = f"  WSS {ep['wss']}" if "wss" in ep else ""  # with tls.cert_file (--config)
        pid = p.proc.pid if p.proc is not None else "?"
        print(
            f"  node {ep['node_id']} (pid {pid}): HTTP {ep['http']}  TCP {ep['tcp']}"
            f"  WS {ep['ws']}{wss}  gRPC {ep['grpc']}"
            + (f"  console {ep['console']}" if "console" in ep else "")
        )
    also_local = host_base == DEFAULT_HOST_BASE  # http.also_host, above
    print(usage(data_dir, tokens, procs[0].endpoints, also_local))
    print("A node that exits is started again. Ctrl-C stops the cluster.", flush=True)
    supervisor = Supervisor(procs, lambda text: print(f"raftchat dev: {text}", flush=True))
    try:
        while not stop.wait(SUPERVISE_INTERVAL_S):
            supervisor.poll()
    finally:
        wait_all_stopped(procs)
    print("raftchat dev: stopped", flush=True)
    return 0
