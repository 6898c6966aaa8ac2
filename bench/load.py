"""``raftchat bench``: durable throughput, latencies, idle cost and failover of a local cluster.

The bench drives a fresh cluster of real node processes from the outside, exactly as clients
would: users and group channels are created over the HTTP API, load comes from WKProto sessions
of the project's client library (``client.wkproto``), and leaders are found through
``GET /cluster/status``. Nothing of the server is imported but ``launcher.devcluster``, which only
starts and stops processes.

Phases (``docs/benchmarks.md`` explains the method and gives results):

1. **load**: every client sends to its group channel with a bounded window of SENDs in flight
   (or at a fixed total rate with ``--rate``); each channel's other members are connected to
   other nodes, so every delivery crosses nodes. After a warm-up, the measured window gives
   durable sends/s (successful SENDACKs), SEND->SENDACK latency and delivery latency (the send
   time travels in the payload; every client runs on this machine's one monotonic clock).
2. **commit**: the leaders' own propose->commit->apply->fsync latency from ``/cluster/status``.
3. **idle**: each node's CPU over a quiet stretch, from ``/proc/<pid>/stat``.
4. **failover**: a steady writer to one channel through a follower; its group leader is
   SIGKILLed and the time from the kill to the first acknowledged write issued after it is the
   unavailability window. The killed node is restarted (and caught up) between rounds.

The result is a readable table (stdout), then one line ``RAFTCHAT_BENCH {json}`` (the last line
of stdout) and, with ``--json FILE``, the same JSON indented in a file. Every metric carries its
target and verdict; phases that were skipped say so. Every process the bench starts is stopped
when it ends, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from client.errors import ClientClosed, ClientError
from client.wkproto import WKClient, open_client
from launcher.devcluster import (
    HTTP_PORT,
    SLOT_GROUPS,
    TCP_PORT,
    NodeProcess,
    NodeStartError,
    cluster_env,
    ensure_ports_free,
    node_env,
    start_all,
)
from proto.wkproto import ChannelType, ReasonCode

from .cpumeter import CpuMeter, cpu_per_send

if TYPE_CHECKING:
    from client.http import SyncHttpClient
# The HTTP client is imported where it is used: ``raftchat node`` builds this command's parser
# too, and a node process has no use for it.

HASH_SLOTS = 256

J = TypeVar("J")
R = TypeVar("R")

TARGET_SENDS_PER_S = 5000.0
TARGET_SENDACK_P99_MS = 100.0
TARGET_COMMIT_P50_MS = 10.0
TARGET_IDLE_CPU_PCT = 5.0
TARGET_FAILOVER_S = 2.0

SEND_TIMEOUT_S = 10.0
"""A SEND without a SENDACK by then counts as a lost ack (the server answers every SEND within
its forward timeout, 5 s by default, even when it cannot commit)."""

QUIET_S = 3.0
"""After the last SENDACK, receivers keep listening until no RECV came for this long."""

_HEADER = struct.Struct("<dB")
"""Payload prefix: when the SEND was due (``time.monotonic()``; with ``--rate`` the scheduled time,
so delivery latency, like SENDACK latency, includes any wait for the window) and the sender's
node id."""

SUMMARY_PREFIX = "RAFTCHAT_BENCH "


_BENCH_OWNED_SETTINGS = {
    "node.id",
    "node.host",
    "node.data_dir",
    "cluster.nodes",
    "cluster.password",
    "gateway.tcp_port",
    "gateway.ws_port",
    "http.port",
    "cluster.grpc_port",
    "cluster.raft_port",
}


class BenchError(Exception):
    """The bench cannot run (ports taken, a node would not start, bad arguments...)."""


# --- arguments ------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument(
        "--data", help="data directory (must be empty or absent; default: a temp dir, removed)"
    )
    p.add_argument(
        "--host-base",
        default="127.0.0",
        help="first three octets of the node addresses: node i is HOST_BASE.(10+i) (127.0.0)",
    )
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (3)")
    p.add_argument("--clients", type=int, default=60, help="WKProto sessions (default 60)")
    p.add_argument("--channels", type=int, default=30, help="group channels (default 30)")
    p.add_argument("--window", type=int, default=4, help="SENDs in flight per client (default 4)")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="target total sends/s; 0 = as fast as the window allows (default 0)",
    )
    p.add_argument("--payload", type=int, default=200, help="payload bytes (default 200)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="load-generator processes, each with its share of the clients (default 2)",
    )
    p.add_argument("--json", dest="json_file", help="also write the result JSON to this file")
    p.add_argument(
        "--no-encrypt", action="store_true", help="turn payload encryption off (nodes + clients)"
    )
    p.add_argument("--idle-seconds", type=float, default=10.0, help="idle phase length (10)")
    p.add_argument("--skip-idle", action="store_true", help="skip the idle CPU phase")
    p.add_argument(
        "--failover-rounds", type=int, default=3, help="leader kills in the failover phase (3)"
    )
    p.add_argument("--skip-failover", action="store_true", help="skip the failover phase")
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a node setting for every node, e.g. messages.commit_window_ms=5 (repeatable)",
    )


@dataclass(frozen=True)
class BenchConfig:
    nodes: int = 3
    data: str | None = None
    host_base: str = "127.0.0"
    duration: float = 20.0
    warmup: float = 3.0
    clients: int = 60
    channels: int = 30
    window: int = 4
    rate: float = 0.0
    payload: int = 200
    workers: int = 2
    json_file: str | None = None
    encrypt: bool = True
    idle_seconds: float = 10.0
    skip_idle: bool = False
    failover_rounds: int = 3
    skip_failover: bool = False
    settings: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> BenchConfig:
        return cls(
            nodes=a.nodes,
            data=a.data,
            host_base=a.host_base,
            duration=a.duration,
            warmup=a.warmup,
            clients=a.clients,
            channels=a.channels,
            window=a.window,
            rate=a.rate,
            payload=a.payload,
            workers=a.workers,
            json_file=a.json_file,
            encrypt=not a.no_encrypt,
            idle_seconds=a.idle_seconds,
            skip_idle=a.skip_idle,
            failover_rounds=a.failover_rounds,
            skip_failover=a.skip_failover,
            settings=tuple(a.settings),
        )

    def node_settings(self) -> dict[str, str]:
        """``--set`` as ``RAFTCHAT_*`` variables (``docs/configuration.md``)."""
        out = {}
        for item in self.settings:
            key, _, value = item.partition("=")
            out["RAFTCHAT_" + key.strip().replace(".", "_").upper()] = value.strip()
        return out

    def problems(self) -> list[str]:
        out = []
        octets = self.host_base.split(".")
        if len(octets) != 3 or not all(o.isdigit() and int(o) < 256 for o in octets):
            out.append("--host-base must be three octets, like 127.0.0")
        elif octets[0] != "127":
            out.append("--host-base must be a loopback prefix (127.x.y)")
        if not 1 <= self.nodes <= 9:
            out.append("--nodes must be 1..9")
        if self.channels < 1:
            out.append("--channels must be at least 1")
        if self.clients < 2 * self.channels:
            out.append("--clients must be at least twice --channels (a channel needs a receiver)")
        if not 1 <= self.window <= 256:
            out.append("--window must be 1..256 (the server reads at most 256 SENDs ahead)")
        if self.rate < 0:
            out.append("--rate must be >= 0")
        if not _HEADER.size <= self.payload <= 1 << 19:
            out.append(f"--payload must be {_HEADER.size}..{1 << 19} bytes")
        if self.duration <= 0 or self.warmup < 0:
            out.append("--duration must be > 0 and --warmup >= 0")
        if not 1 <= self.workers <= 64:
            out.append("--workers must be 1..64")
        if self.failover_rounds < 1:
            out.append("--failover-rounds must be at least 1")
        for item in self.settings:
            key, eq, _ = item.partition("=")
            if not eq or key.count(".") != 1:
                out.append(f"--set takes SECTION.KEY=VALUE, got {item!r}")
            elif key.strip().lower() in _BENCH_OWNED_SETTINGS:
                out.append(f"--set {key.strip()}: the bench sets this one itself")
        if not self.skip_failover and self.nodes < 3:
            out.append("the failover phase needs 3 nodes or more (or --skip-failover)")
        return out


# --- the plan: who connects where and sends to which channel -------------------------------


@dataclass(frozen=True)
class ClientSpec:
    uid: str
    token: str
    node: int
    host: str
    channel: str
    receivers: int
    """Other members of the channel: the RECVs each successful send should cause."""


def plan_clients(cfg: BenchConfig, hosts: dict[int, str]) -> list[ClientSpec]:
    """Client k sends to channel k mod C as its member k div C; member i of channel j connects
    to node (i + j) mod N, so a channel's members sit on distinct nodes (while it has no more
    members than there are nodes) and the clients spread evenly over the nodes."""
    size = {j: 0 for j in range(cfg.channels)}
    for k in range(cfg.clients):
        size[k % cfg.channels] += 1
    specs = []
    for k in range(cfg.clients):
        j, i = k % cfg.channels, k // cfg.channels
        node = (i + j) % cfg.nodes + 1
        specs.append(
            ClientSpec(
                uid=f"bench-u{k}",
                token=f"bench-t{k}-{secrets.token_hex(4)}",
                node=node,
                host=hosts[node],
                channel=f"bench-c{j}",
                receivers=size[j] - 1,
            )
        )
    return specs


# --- statistics -----------------------------------------------------------------------------


def percentiles(samples: Iterable[float]) -> dict[str, float] | None:
    """Nearest-rank p50/p90/p99, max and mean of ``samples`` (milliseconds in, out)."""
    data = sorted(samples)
    n = len(data)
    if not n:
        return None

    def rank(q: float) -> float:
        return round(data[min(n - 1, max(0, math.ceil(q * n) - 1))], 2)

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": round(data[-1], 2),
        "mean": round(sum(data) / n, 2),
        "n": n,
    }


# --- the load generator (runs in worker processes) ------------------------------------------


@dataclass
class WorkerJob:
    clients: list[ClientSpec]
    encrypt: bool
    window: int
    payload: int
    rate_per_client: float
    """0: closed loop (``window`` sends in flight per client, each reissued at once)."""


@dataclass
class WorkerResult:
    ack_ms: list[float] = field(default_factory=list)
    """SEND->SENDACK of successful sends issued inside the window."""
    ok_acked_in_window: int = 0
    """Successful SENDACKs that arrived inside the window (the throughput numerator)."""
    issued: int = 0
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    """Non-success SENDACKs by reason name, and ``lost_ack_timeout``/``lost_ack_closed``."""
    expected_deliveries: int = 0
    """RECVs that successful sends issued inside the window should cause."""
    cross_ms: list[float] = field(default_factory=list)
    same_ms: list[float] = field(default_factory=list)
    received_in_window: int = 0
    received_total: int = 0
    disconnects: int = 0
    bad_recv: int = 0


class _Load:
    def __init__(self, job: WorkerJob, start: float, w0: float, w1: float) -> None:
        self.job = job
        self.start, self.w0, self.w1 = start, w0, w1
        self.r = WorkerResult()
        self.last_activity = time.monotonic()
        self.stopping = False
        self.pad = b"x" * (job.payload - _HEADER.size)

    def _fail(self, reason: str) -> None:
        self.r.failures[reason] = self.r.failures.get(reason, 0) + 1

    async def send_one(self, client: WKClient, spec: ClientSpec, intended: float) -> bool:
        """One SEND; latency counts from ``intended`` (the scheduled time under --rate, so a
        stalled window does not hide waiting: no coordinated omission). False: closed."""
        payload = _HEADER.pack(intended, spec.node) + self.pad
        self.r.issued += 1
        try:
            res = await client.send(
                spec.channel, ChannelType.GROUP, payload, timeout_s=SEND_TIMEOUT_S
            )
        except trio.TooSlowError:
            self._fail("lost_ack_timeout")
            return True
        except ClientError:
            self._fail("lost_ack_closed")
            return False
        now = time.monotonic()
        self.last_activity = now
        if not res.ok:
            try:
                name = ReasonCode(res.reason_code).name
            except ValueError:
                name = f"reason_{res.reason_code}"
            self._fail(name)
            return True
        self.r.ok += 1
        if self.w0 <= now <= self.w1:
            self.r.ok_acked_in_window += 1
        if self.w0 <= intended <= self.w1:
            self.r.ack_ms.append((now - intended) * 1000.0)
            self.r.expected_deliveries += spec.receivers
        return True

    async def closed_loop(self, client: WKClient, spec: ClientSpec) -> None:
        while True:
            t = time.monotonic()
            if t >= self.w1 or not await self.send_one(client, spec, t):
                return

    async def paced(self, client: WKClient, spec: ClientSpec, offset: float) -> None:
        interval = 1.0 / self.job.rate_per_client
        window = trio.Semaphore(self.job.window)
        t = self.start + offset * interval

        async def one(intended: float) -> None:
            try:
                await self.send_one(client, spec, intended)
            finally:
                window.release()

        async with trio.open_nursery() as nursery:
            while t < self.w1 and not client.closed.is_set():
                await trio.sleep(max(0.0, t - time.monotonic()))
                await window.acquire()
                nursery.start_soon(one, t)
                t += interval

    async def receive(self, client: WKClient, spec: ClientSpec) -> None:
        while True:
            try:
                msg = await client.recv(timeout_s=math.inf)
            except ClientClosed:
                if not self.stopping:
                    self.r.disconnects += 1
                return
            now = time.monotonic()
            self.last_activity = now
            self.r.received_total += 1
            if len(msg.payload) < _HEADER.size:
                self.r.bad_recv += 1
                continue
            sent, origin = _HEADER.unpack_from(msg.payload)
            if not self.w0 <= sent <= self.w1:
                continue
            self.r.received_in_window += 1
            (self.r.cross_ms if origin != spec.node else self.r.same_ms).append(
                (now - sent) * 1000.0
            )


async def _worker_async(conn: Connection, job: WorkerJob) -> WorkerResult:
    async with AsyncExitStack() as stack:
        sessions: list[tuple[WKClient, ClientSpec]] = []
        for spec in job.clients:
            client = await stack.enter_async_context(
                open_client(
                    spec.host,
                    TCP_PORT,
                    uid=spec.uid,
                    token=spec.token,
                    encrypt=job.encrypt,
                    connect_timeout_s=15.0,
                )
            )
            sessions.append((client, spec))
        conn.send(("ready", len(sessions)))
        message = await trio.to_thread.run_sync(conn.recv)
        _, start, w0, w1 = message
        load = _Load(job, start, w0, w1)
        async with trio.open_nursery() as receivers:
            for client, spec in sessions:
                receivers.start_soon(load.receive, client, spec)
            await trio.sleep(max(0.0, start - time.monotonic()))
            async with trio.open_nursery() as senders:
                for n, (client, spec) in enumerate(sessions):
                    if job.rate_per_client > 0:
                        senders.start_soon(load.paced, client, spec, n / len(sessions))
                    else:
                        for _ in range(job.window):
                            senders.start_soon(load.closed_loop, client, spec)
            # Every SEND is answered; the RECVs they cause trail a little.
            while time.monotonic() - load.last_activity < QUIET_S:
                await trio.sleep(0.1)
            load.stopping = True
            receivers.cancel_scope.cancel()
        for client, _ in sessions:
            load.r.bad_recv += client.bad_msg_keys + client.bad_payloads
        return load.r


def run_worker(conn: Connection, main: Callable[[Connection, J], Awaitable[R]], job: J) -> R:
    """The body of a spawned load process (it shares nothing by accident): ``main`` under
    trio, SIGINT ignored (the parent stops its workers), a failure reported on ``conn`` as
    ``("error", text)`` before it is raised."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return trio.run(main, conn, job)
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        raise


def worker_main(conn: Connection, job: WorkerJob) -> None:
    """Entry point of a load-generator process."""
    conn.send(("result", asdict(run_worker(conn, _worker_async, job))))


# --- the cluster ----------------------------------------------------------------------------


def node_hosts(cfg: BenchConfig) -> dict[int, str]:
    return {i: f"{cfg.host_base}.{10 + i}" for i in range(1, cfg.nodes + 1)}


def check_ports_free(hosts: dict[int, str], groups: int = SLOT_GROUPS) -> None:
    try:
        ensure_ports_free(hosts, groups)
    except NodeStartError as e:
        raise BenchError(str(e)) from None


class BenchCluster:
    def __init__(self, cfg: BenchConfig, root: Path) -> None:
        self.hosts = node_hosts(cfg)
        # The load step drives each group channel far past the default per-channel rate
        # limit (40/s): the bench measures capacity, so the limit is off unless --set enables it.
        extra = {"RAFTCHAT_LOG_FORMAT": "text", "RAFTCHAT_MESSAGES_GROUP_RATE_LIMIT": "0"}
        if not cfg.encrypt:
            extra["RAFTCHAT_GATEWAY_ENCRYPTION"] = "false"
        # With credentials, as a deployment runs: their check is part of every request.
        api_token, admin_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        extra.update(
            {"RAFTCHAT_AUTH_API_TOKEN": api_token, "RAFTCHAT_AUTH_ADMIN_TOKEN": admin_token}
        )
        extra.update(cfg.node_settings())
        envs = cluster_env(self.hosts, secrets.token_urlsafe(24), extra)
        self.root = root
        self.nodes = {
            i: NodeProcess(
                node_id=i,
                data_dir=root / f"node{i}",
                env=node_env(i, host, root / f"node{i}", envs[i]),
                log_path=root / f"node{i}.log",
            )
            for i, host in self.hosts.items()
        }
        from client.http import SyncHttpClient

        self.api: dict[int, SyncHttpClient] = {
            i: SyncHttpClient(
                f"http://{host}:{HTTP_PORT}",
                timeout_s=15.0,
                api_token=api_token,
                admin_token=admin_token,
            )
            for i, host in self.hosts.items()
        }

    def start(self) -> None:
        start_all(list(self.nodes.values()))

    def stop(self) -> None:
        for api in self.api.values():
            api.close()
        for n in self.nodes.values():
            n.stop(timeout_s=10.0)

    def post(self, node: int, path: str, body: Any) -> Any:
        try:
            return self.api[node].call("POST", path, body)
        except ClientError as e:
            state = "running" if self.nodes[node].running else "not running (see its log)"
            raise BenchError(f"POST {path} on node {node}: {e}; node {node} is {state}") from e

    def status(self, node: int) -> Any:
        return self.api[node].call("GET", "/cluster/status")

    def running(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.running]

    def pids(self) -> dict[str, int]:
        return {f"node{i}": n.proc.pid for i, n in self.nodes.items() if n.proc and n.running}

    def leader_of_key(self, key: str, timeout_s: float = 15.0) -> tuple[int, int]:
        """(group, leading node) of the slot group owning ``key``, as the leader reports it."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                table = self.status(self.running()[0])["slot_table"]
                group = int(table[zlib.crc32(key.encode()) % len(table)])
                for node in self.running():
                    for g in self.status(node)["groups"]:
                        if g["group"] == group and g.get("is_leader"):
                            return group, node
            except ClientError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"no leader found for the group of {key!r}")
            time.sleep(0.05)

    def wait_caught_up(self, node: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                groups = [g for g in self.status(node)["groups"] if g["local"]]
                if all(g["raft_applied"] >= g["commit_index"] for g in groups):
                    return
            except ClientError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"node {node} did not catch up in {timeout_s} s")
            time.sleep(0.1)


def setup_data(cfg: BenchConfig, cluster: BenchCluster, specs: list[ClientSpec]) -> None:
    """Tokens and channels over HTTP, spread over the nodes, a few requests at a time."""
    members: dict[str, list[str]] = {}
    for s in specs:
        members.setdefault(s.channel, []).append(s.uid)
    nodes = sorted(cluster.hosts)
    jobs: list[tuple[int, str, dict[str, Any]]] = [
        (nodes[k % len(nodes)], "/user/token", {"uid": s.uid, "token": s.token})
        for k, s in enumerate(specs)
    ]
    jobs += [
        (
            nodes[j % len(nodes)],
            "/channel",
            {"channel_id": ch, "channel_type": int(ChannelType.GROUP), "subscribers": uids},
        )
        for j, (ch, uids) in enumerate(sorted(members.items()))
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda job: cluster.post(*job), jobs))


# --- phases ---------------------------------------------------------------------------------


def _recv_from(conn: Connection, proc: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not conn.poll(0.2):
        if not proc.is_alive():
            raise BenchError(f"a load worker died while {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"a load worker took over {timeout_s:.0f} s {what}")
    kind, value = conn.recv()
    if kind == "error":
        raise BenchError(f"a load worker failed while {what}: {value}")
    return value


def run_load(
    cfg: BenchConfig, cluster: BenchCluster, specs: list[ClientSpec], procs: list[Any]
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    workers = min(cfg.workers, len(specs))
    rate_per_client = cfg.rate / len(specs) if cfg.rate > 0 else 0.0
    pipes: list[Connection] = []
    for w in range(workers):
        job = WorkerJob(
            clients=specs[w::workers],
            encrypt=cfg.encrypt,
            window=cfg.window,
            payload=cfg.payload,
            rate_per_client=rate_per_client,
        )
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(child, job), name=f"bench-load-{w}")
        proc.start()
        child.close()
        procs.append(proc)
        pipes.append(parent)
    for conn, proc in zip(pipes, procs, strict=True):
        _recv_from(conn, proc, 120.0, "connecting its clients")
    start = time.monotonic() + 0.3
    w0 = start + cfg.warmup
    w1 = w0 + cfg.duration
    for conn in pipes:
        conn.send(("go", start, w0, w1))
    pids = cluster.pids()
    nodes = tuple(pids)
    pids.update({f"load{w}": p.pid for w, p in enumerate(procs)})
    meter = CpuMeter(pids, threads_of=nodes)
    time.sleep(max(0.0, w0 - time.monotonic()))
    meter.start()
    time.sleep(max(0.0, w1 - time.monotonic()))
    cpu = meter.stop()
    commit = commit_latency(cluster)  # right away: the leaders' recent batches are the load's
    parts = [
        WorkerResult(**_recv_from(conn, proc, SEND_TIMEOUT_S + 60.0, "finishing"))
        for conn, proc in zip(pipes, procs, strict=True)
    ]
    for proc in procs:
        proc.join(10)
    total = WorkerResult()
    for part in parts:
        total.ack_ms += part.ack_ms
        total.cross_ms += part.cross_ms
        total.same_ms += part.same_ms
        for name in (
            "ok_acked_in_window",
            "issued",
            "ok",
            "expected_deliveries",
            "received_in_window",
            "received_total",
            "disconnects",
            "bad_recv",
        ):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        for reason, count in part.failures.items():
            total.failures[reason] = total.failures.get(reason, 0) + count
    window_s = w1 - w0
    lost = sum(v for k, v in total.failures.items() if k.startswith("lost_ack"))
    return {
        "window_s": round(window_s, 2),
        "workers": workers,
        "sends_issued": total.issued,
        "sends_ok": total.ok,
        "sends_per_s": round(total.ok_acked_in_window / window_s, 1),
        "offered_rate": cfg.rate or None,
        "sendack_ms": percentiles(total.ack_ms),
        "failures": dict(sorted(total.failures.items())),
        "lost_acks": lost,
        "delivery_cross_node_ms": percentiles(total.cross_ms),
        "delivery_same_node_ms": percentiles(total.same_ms),
        "deliveries": {
            "expected": total.expected_deliveries,
            "received": total.received_in_window,
            "missing": max(0, total.expected_deliveries - total.received_in_window),
            "received_total": total.received_total,
            "per_s": round(total.received_in_window / window_s, 1),
        },
        "disconnects": total.disconnects,
        "bad_recv": total.bad_recv,
        "cpu": cpu,
        "commit_ms": commit,
    }


def commit_latency(cluster: BenchCluster) -> dict[str, Any]:
    """Each leader's recent batch commit latency (propose -> commit -> apply -> WAL fsync).

    Percentiles of different groups do not merge exactly: ``p50`` is the batch-weighted median of
    the groups' p50s and ``p99`` the worst group's p99 (an upper bound)."""
    groups = []
    for node in cluster.running():
        try:
            status = cluster.status(node)
        except ClientError:
            continue
        for g in status["groups"]:
            cm = g.get("commit_ms")
            if g.get("is_leader") and cm:
                groups.append(
                    {
                        "group": g["group"],
                        "leader": node,
                        "p50": cm["p50"],
                        "p99": cm["p99"],
                        "n": cm["n"],
                        "batches": g.get("batches"),
                        "sends": g.get("sends"),
                    }
                )
    groups.sort(key=lambda g: g["group"])
    if not groups:
        return {"p50": None, "p99": None, "groups": []}
    weighted = sorted((g["p50"], g["n"]) for g in groups)
    half, acc, p50 = sum(n for _, n in weighted) / 2, 0, weighted[-1][0]
    for value, n in weighted:
        acc += n
        if acc >= half:
            p50 = value
            break
    batches = sum(g["batches"] or 0 for g in groups)
    sends = sum(g["sends"] or 0 for g in groups)
    return {
        "p50": p50,
        "p99": max(g["p99"] for g in groups),
        "sends_per_batch": round(sends / batches, 1) if batches else None,
        "groups": groups,
    }


def run_idle(cfg: BenchConfig, cluster: BenchCluster) -> dict[str, Any]:
    time.sleep(3.0)  # let the load's stragglers (deliveries, compaction) settle
    pids = cluster.pids()
    meter = CpuMeter(pids, threads_of=tuple(pids))
    meter.start()
    time.sleep(cfg.idle_seconds)
    cpu = meter.stop()
    per_node = {k: v for k, v in cpu["pct_of_one_core"].items() if v is not None}
    return {
        "seconds": cpu["seconds"],
        "pct_of_one_core": per_node,
        "threads_pct_of_one_core": cpu["threads_pct_of_one_core"],
        "max_pct": max(per_node.values()) if per_node else None,
        "others_pct_of_one_core": cpu["others_pct_of_one_core"],
    }


FAILOVER_CHANNEL = "bench-failover"
FAILOVER_UID = "bench-fo"
FAILOVER_INTERVAL_S = 0.01
"""The light writer issues a SEND every 10 ms (~100/s), each on its own, so a SEND stuck on the
dead leader does not hold back the next one: the first success after the kill is seen within
10 ms of the cluster accepting writes again."""


async def _failover_writer(
    host: str, token: str, kill: Callable[[], float], encrypt: bool
) -> dict[str, Any]:
    records: list[tuple[float, float, bool, str]] = []
    killed_at: list[float] = []
    resumed = trio.Event()
    steady = trio.Event()
    outstanding = 0

    async with open_client(
        host, TCP_PORT, uid=FAILOVER_UID, token=token, encrypt=encrypt, connect_timeout_s=15.0
    ) as client:

        async def one(i: int) -> None:
            nonlocal outstanding
            issued = time.monotonic()
            try:
                res = await client.send(
                    FAILOVER_CHANNEL,
                    ChannelType.GROUP,
                    f"fo{i}".encode(),
                    timeout_s=SEND_TIMEOUT_S,
                )
                ok, why = res.ok, ("ok" if res.ok else _reason_name(res.reason_code))
            except trio.TooSlowError:
                ok, why = False, "lost_ack_timeout"
            except ClientError:
                ok, why = False, "lost_ack_closed"
            finally:
                outstanding -= 1
            done = time.monotonic()
            records.append((issued, done, ok, why))
            if ok and not killed_at and sum(1 for r in records if r[2]) >= 30:
                steady.set()
            if ok and killed_at and issued >= killed_at[0]:
                resumed.set()

        issuing = trio.CancelScope()

        async with trio.open_nursery() as nursery:

            async def issue() -> None:
                nonlocal outstanding
                with issuing:
                    i = 0
                    t = time.monotonic()
                    while True:
                        outstanding += 1
                        nursery.start_soon(one, i)
                        i += 1
                        t += FAILOVER_INTERVAL_S
                        await trio.sleep(max(0.0, t - time.monotonic()))

            nursery.start_soon(issue)
            with trio.fail_after(30):
                await steady.wait()
            killed_at.append(await trio.to_thread.run_sync(kill))
            with trio.move_on_after(30):
                await resumed.wait()
            issuing.cancel()
            # Writes stuck on the dead leader are answered (or time out) too: their fate shows
            # what a client sees during a failover.
            if resumed.is_set():
                with trio.move_on_after(SEND_TIMEOUT_S + 1):
                    while outstanding:
                        await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    kill_t = killed_at[0]
    first_ok = min((r[1] for r in records if r[2] and r[0] >= kill_t), default=None)
    failed: dict[str, int] = {}
    for r in records:
        if not r[2]:
            failed[r[3]] = failed.get(r[3], 0) + 1
    return {
        "unavailable_s": round(first_ok - kill_t, 3) if first_ok is not None else None,
        "writes_answered": len(records),
        "issued_before_kill_answered_after": sum(1 for r in records if r[0] < kill_t < r[1]),
        "slowest_answer_s": round(max((r[1] - r[0] for r in records), default=0.0), 3),
        "failed": failed,
    }


def _reason_name(code: int) -> str:
    try:
        return ReasonCode(code).name
    except ValueError:
        return f"reason_{code}"


def run_failover(cfg: BenchConfig, cluster: BenchCluster) -> dict[str, Any]:
    token = secrets.token_hex(8)
    nodes = sorted(cluster.hosts)
    cluster.post(nodes[0], "/user/token", {"uid": FAILOVER_UID, "token": token})
    cluster.post(
        nodes[-1],
        "/channel",
        {
            "channel_id": FAILOVER_CHANNEL,
            "channel_type": int(ChannelType.GROUP),
            "subscribers": [FAILOVER_UID],
        },
    )
    rounds = []
    for r in range(cfg.failover_rounds):
        group, leader = cluster.leader_of_key(FAILOVER_CHANNEL)
        writer = next(n for n in cluster.running() if n != leader)
        victim = cluster.nodes[leader]
        _progress(
            f"failover {r + 1}/{cfg.failover_rounds}: group {group}, killing leader "
            f"node {leader}, writing through node {writer}"
        )

        def kill(victim: NodeProcess = victim) -> float:
            assert victim.proc is not None
            t = time.monotonic()
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            return t

        result = trio.run(_failover_writer, cluster.hosts[writer], token, kill, cfg.encrypt)
        _, new_leader = cluster.leader_of_key(FAILOVER_CHANNEL)
        result.update({"group": group, "killed": leader, "writer_node": writer})
        result["new_leader"] = new_leader
        t = time.monotonic()
        victim.start(timeout_s=60.0)
        cluster.wait_caught_up(leader)
        result["restart_and_catch_up_s"] = round(time.monotonic() - t, 2)
        rounds.append(result)
    times = [r["unavailable_s"] for r in rounds]
    worst = None if any(t is None for t in times) else max(times)
    return {"rounds": rounds, "max_unavailable_s": worst}


# --- verdicts and output --------------------------------------------------------------------


def verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    load = result["load"]
    rows: list[dict[str, Any]] = []

    def row(metric: str, value: Any, target: str, ok: bool | None) -> None:
        rows.append(
            {
                "metric": metric,
                "value": value,
                "target": target,
                "result": "n/a" if ok is None else ("pass" if ok else "FAIL"),
            }
        )

    row(
        "durable sends/s",
        load["sends_per_s"],
        f">= {TARGET_SENDS_PER_S:.0f}",
        load["sends_per_s"] >= TARGET_SENDS_PER_S,
    )
    ack = load["sendack_ms"]
    row(
        "SEND->SENDACK p99 ms",
        ack and ack["p99"],
        f"< {TARGET_SENDACK_P99_MS:.0f}",
        bool(ack) and ack["p99"] < TARGET_SENDACK_P99_MS,
    )
    commit = load["commit_ms"]
    row(
        "commit p50 ms",
        commit["p50"],
        f"< {TARGET_COMMIT_P50_MS:.0f}",
        commit["p50"] is not None and commit["p50"] < TARGET_COMMIT_P50_MS,
    )
    idle = result["idle"]
    if idle is None:
        row("idle node CPU % of a core (max)", None, f"< {TARGET_IDLE_CPU_PCT:.0f}", None)
    else:
        row(
            "idle node CPU % of a core (max)",
            idle["max_pct"],
            f"< {TARGET_IDLE_CPU_PCT:.0f}",
            idle["max_pct"] is not None and idle["max_pct"] < TARGET_IDLE_CPU_PCT,
        )
    fo = result["failover"]
    if fo is None:
        row("writes resume after leader kill s (max)", None, f"< {TARGET_FAILOVER_S:.0f}", None)
    else:
        worst = fo["max_unavailable_s"]
        row(
            "writes resume after leader kill s (max)",
            worst,
            f"< {TARGET_FAILOVER_S:.0f}",
            worst is not None and worst < TARGET_FAILOVER_S,
        )
    row("lost SENDACKs", load["lost_acks"], "0", load["lost_acks"] == 0)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _pct_line(p: dict[str, float] | None) -> str:
    if not p:
        return "-"
    return (
        f"p50 {_fmt(p['p50'])}  p90 {_fmt(p['p90'])}  p99 {_fmt(p['p99'])}  "
        f"max {_fmt(p['max'])} ms  (n={p['n']:,})"
    )


def render_table(result: dict[str, Any]) -> str:
    c = result["config"]
    load = result["load"]
    mode = f"rate {c['rate']:.0f}/s" if c["rate"] else f"window {c['window']}/client"
    lines = [
        "",
        f"raftchat bench: {c['nodes']} nodes, {c['clients']} clients, {c['channels']} channels, "
        f"{mode}, {c['payload']} B payload, {'encrypted' if c['encrypt'] else 'clear'}, "
        f"{load['workers']} load process(es), {load['window_s']:.0f} s measured after "
        f"{c['warmup']:.0f} s warm-up, {result['machine']['cpus']} CPUs, "
        f"revision {result['machine']['revision'] or '?'}"
        + (f", settings {', '.join(c['settings'])}" if c["settings"] else ""),
        "",
        f"{'metric':<42}{'value':>12}  {'target':<10}result",
        "-" * 74,
    ]
    for r in result["targets"]:
        lines.append(f"{r['metric']:<42}{_fmt(r['value']):>12}  {r['target']:<10}{r['result']}")
    lines += [
        "",
        f"SEND->SENDACK        {_pct_line(load['sendack_ms'])}",
        f"delivery cross-node  {_pct_line(load['delivery_cross_node_ms'])}",
    ]
    if load["delivery_same_node_ms"]:
        lines.append(f"delivery same node   {_pct_line(load['delivery_same_node_ms'])}")
    d = load["deliveries"]
    lines.append(
        f"deliveries           {d['received']:,} of {d['expected']:,} expected "
        f"({d['per_s']:,.0f}/s), missing {d['missing']:,}; disconnects {load['disconnects']}"
    )
    commit = load["commit_ms"]
    lines.append(
        f"commit (leaders)     p50 {_fmt(commit['p50'])}  p99 {_fmt(commit['p99'])} ms, "
        f"{_fmt(commit.get('sends_per_batch'))} sends/batch over {len(commit['groups'])} groups"
    )
    failures = {k: v for k, v in load["failures"].items() if v}
    lines.append(
        f"sends                {load['sends_ok']:,} ok of {load['sends_issued']:,} issued; "
        f"failures {failures or 'none'}"
    )
    cpu = load["cpu"]
    per = ", ".join(f"{k} {_fmt(v)}" for k, v in cpu["pct_of_one_core"].items())
    lines.append(
        f"CPU under load       % of one core: {per}; machine {cpu['machine_busy_pct']:.0f} % "
        f"busy of {cpu['cores']} cores (other processes {_fmt(cpu['others_pct_of_one_core'])})"
    )
    lines.extend(_cpu_per_send_lines(result))
    if result["idle"] is not None:
        idle = result["idle"]
        per = ", ".join(f"{k} {_fmt(v)}" for k, v in idle["pct_of_one_core"].items())
        lines.append(
            f"CPU idle             % of one core over {idle['seconds']:.0f} s: {per} "
            f"(other processes {_fmt(idle['others_pct_of_one_core'])})"
        )
    if result["failover"] is not None:
        for i, r in enumerate(result["failover"]["rounds"], 1):
            lines.append(
                f"failover {i}           group {r['group']}: killed node {r['killed']}, "
                f"writes resumed after {_fmt(r['unavailable_s'])} s through node "
                f"{r['writer_node']} (new leader node {r['new_leader']}); slowest answer "
                f"{_fmt(r['slowest_answer_s'])} s, failed writes {r['failed'] or 'none'}"
            )
    lines.append("")
    return "\n".join(lines)


def _revision() -> str | None:
    """The source revision measured (``git describe``), ``-dirty`` with local changes."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _progress(text: str) -> None:
    print(f"raftchat bench: {text}", file=sys.stderr, flush=True)


# --- the command ----------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def bench(cfg: BenchConfig) -> dict[str, Any]:
    problems = cfg.problems()
    if problems:
        raise BenchError("; ".join(problems))
    hosts = node_hosts(cfg)
    try:
        groups = int(cfg.node_settings().get("RAFTCHAT_CLUSTER_GROUPS", SLOT_GROUPS))
    except ValueError:
        raise BenchError("--set cluster.groups needs a number") from None
    check_ports_free(hosts, groups)
    if cfg.data:
        root = Path(cfg.data).resolve()
        if root.exists() and any(root.iterdir()):
            raise BenchError(f"--data {root} is not empty; the bench needs a fresh cluster")
        root.mkdir(parents=True, exist_ok=True)
        keep = True
    else:
        root = Path(tempfile.mkdtemp(prefix="raftchat-bench-"))
        keep = False
    cluster = BenchCluster(cfg, root)
    workers: list[Any] = []
    failed = True
    try:
        _progress(f"starting {cfg.nodes} nodes on {', '.join(hosts.values())} (data in {root})")
        try:
            cluster.start()
        except NodeStartError as e:
            raise BenchError(str(e)) from None
        specs = plan_clients(cfg, hosts)
        _progress(f"creating {len(specs)} users and {cfg.channels} channels over HTTP")
        setup_data(cfg, cluster, specs)
        _progress(
            f"load: {len(specs)} clients in {min(cfg.workers, len(specs))} process(es), "
            f"{cfg.warmup:.0f} s warm-up + {cfg.duration:.0f} s measured"
        )
        load = run_load(cfg, cluster, specs, workers)
        idle = None
        if not cfg.skip_idle:
            _progress(f"idle: measuring node CPU for {cfg.idle_seconds:.0f} s")
            idle = run_idle(cfg, cluster)
        failover = None
        if not cfg.skip_failover:
            failover = run_failover(cfg, cluster)
        result: dict[str, Any] = {
            "config": {k: v for k, v in asdict(cfg).items() if k != "json_file"},
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "revision": _revision(),
            },
            "load": load,
            "idle": idle,
            "cpu_per_send": cpu_per_send(load["cpu"], load["sends_per_s"], idle),
            "failover": failover,
        }
        result["targets"] = verdicts(result)
        failed = False
        return result
    except KeyboardInterrupt:
        failed = False  # nothing went wrong: no logs to keep
        raise
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
            w.join(5)
            if w.is_alive():
                w.kill()
                w.join()
        cluster.stop()
        if failed:
            _progress(f"the node logs are kept in {root}")
        elif not keep:
            shutil.rmtree(root, ignore_errors=True)


def _cpu_per_send_lines(result: dict[str, Any]) -> list[str]:
    per = result.get("cpu_per_send")
    if not per or per["cluster_ms"] is None:
        return []
    nodes = ", ".join(f"{n} {_fmt(v)}" for n, v in per["nodes_ms"].items())
    above = per.get("cluster_above_idle_ms")
    first = f"CPU per send         ms per acked send: cluster {_fmt(per['cluster_ms'])}"
    first += f" (above idle {_fmt(above)})" if above is not None else ""
    rows = per.get("threads_above_idle_ms") or per["threads_ms"]
    what = "above idle" if "threads_above_idle_ms" in per else "total"
    threads = ", ".join(f"{r} {_fmt(v)}" for r, v in rows.items() if v and abs(v) >= 0.05)
    return [
        f"{first}; {nodes}",
        f"CPU per send, thread ms per acked send, all nodes, {what}: {threads}",
    ]


def run_bench(args: argparse.Namespace) -> int:
    cfg = BenchConfig.from_args(args)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        result = bench(cfg)
    except BenchError as e:
        print(f"raftchat bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("raftchat bench: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render_table(result))
    if cfg.json_file:
        Path(cfg.json_file).write_text(json.dumps(result, indent=2) + "\n")
    print(SUMMARY_PREFIX + json.dumps(result, separators=(",", ":")), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raftchat bench")
    add_arguments(parser)
    return run_bench(parser.parse_args(argv))
