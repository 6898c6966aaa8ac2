"""``raftchat fuzz``: one live fuzzing run, from a fresh cluster to a verdict.

1. start N real node processes (default 3) on ``<host-base>.11``, ``.12``, ... (default
   127.0.240.x: not the addresses of ``make run``, the bench, the chaos suite or the tests);
2. set up the chaos suite's chat workload and the fuzzer's own users and group channels, start
   the workload, the crash watch, the memory sampler and the /health probes;
3. after ``--baseline`` seconds, start the worker process (:mod:`chaos.fuzz.worker`), which
   fuzzes every target until ``--time`` runs out or ``--frames`` were sent; a node that exits
   meanwhile is recorded as a crash and restarted;
4. let the workload run ``--settle`` seconds more, stop it, wait for the cluster to be healthy,
   read every channel back from every node and take every replica's digest;
5. run the chaos checkers over the workload's history and write ``results/<run>/``:
   ``fuzz.json`` (everything below), ``verdict.json`` and ``report.html`` (the chaos suite's,
   with the fuzzing shaded as a fault window), ``history.jsonl``, ``scenarios.tsv`` (every
   connection the fuzzer made, for replays) and ``nodes/node<N>.log``; print the text report.

The exit status is 0 when the run passed, 1 when it failed (a crash, a checker, a server error),
2 when it could not be made, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import trio

from launcher.devcluster import SLOT_GROUPS, NodeStartError, ensure_ports_free

from ..checkers import check_all
from ..cluster import ChaosCluster
from ..history import History, HistoryWriter, NemesisValue, load_history
from ..http import HttpError
from ..report import write_report
from ..runner import revision, wait_healthy
from ..workload import ChatWorkload, WorkloadConfig
from .context import FUZZ_PREFIX, FuzzContext, FuzzUser
from .report import (
    Window,
    checker_counts,
    judge,
    log_errors,
    probe_stalls,
    render_text,
    send_latency,
    server_errors,
    suspects,
)
from .watch import NodeWatch
from .worker import TARGETS, WorkerConfig

DEFAULT_HOST_BASE = "127.0.240"
FUZZ_USERS = (("fz0", 1), ("fz1", 1), ("fz2", 1), ("fz3", 1), ("fz4", 0), ("fz5", 2))
"""Fuzz logins (uid, device flag: WEB allows ten sessions per uid, APP and PC one)."""
FUZZ_GROUPS = ("fzg0", "fzg1")
LOAD = WorkloadConfig(users=6, group_channels=2, group_size=4, person_channels=3, send_gap_s=1.0)
"""Lighter than the chaos suite's: the history of a two-hour campaign stays small enough to
check in a minute or two, and six users still cover group and person channels."""
WORKER_GRACE_S = 30.0
"""How long past ``--time`` the worker may take to finish its last connections."""


class RunError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class FuzzConfig:
    nodes: int = 3
    time_s: float = 60.0
    frames: int = 0
    rate: float = 0.0
    seed: int = 0
    targets: tuple[str, ...] = TARGETS
    out: str = "results"
    host_base: str = DEFAULT_HOST_BASE
    baseline_s: float = 10.0
    settle_s: float = 10.0
    log_level: str = "warning"
    replay: tuple[str, ...] = ()
    lanes_scale: float = 1.0
    keep_data: bool = False
    load: WorkloadConfig = field(default_factory=lambda: LOAD)
    command: str = ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--time", type=float, default=None, help="seconds of fuzzing (default 60)")
    p.add_argument(
        "--frames",
        type=int,
        default=0,
        help="stop after this many frames in total (then --time is only a cap, default 4 h)",
    )
    p.add_argument("--rate", type=float, default=0.0, help="frames/s over all targets (0: max)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    p.add_argument(
        "--targets",
        default="all",
        help=f"comma-separated: {', '.join(TARGETS)}, or all (default)",
    )
    p.add_argument("--out", default="results", help="parent of the run's results folder")
    p.add_argument(
        "--host-base",
        default=DEFAULT_HOST_BASE,
        help=f"first three octets of the node addresses (default {DEFAULT_HOST_BASE})",
    )
    p.add_argument("--baseline", type=float, default=10.0, help="workload-only seconds first")
    p.add_argument("--settle", type=float, default=10.0, help="workload-only seconds after")
    p.add_argument("--log-level", default="warning", help="the nodes' log level (default warning)")
    p.add_argument(
        "--replay",
        default="",
        help="TARGET:N,... connections of a run (same --seed) to run again instead of fuzzing",
    )
    p.add_argument(
        "--lanes", type=float, default=1.0, help="scale the concurrent connections per target"
    )
    p.add_argument("--keep-data", action="store_true", help="keep the nodes' data directories")


def config_from_args(a: argparse.Namespace) -> FuzzConfig:
    targets = TARGETS if a.targets == "all" else tuple(t for t in a.targets.split(",") if t)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise RunError(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    time_s = a.time if a.time is not None else (4 * 3600.0 if a.frames else 60.0)
    cfg = FuzzConfig(
        nodes=a.nodes,
        time_s=time_s,
        frames=a.frames,
        rate=a.rate,
        seed=a.seed if a.seed is not None else int(time.time()) % 100_000,
        targets=targets,
        out=a.out,
        host_base=a.host_base,
        baseline_s=a.baseline,
        settle_s=a.settle,
        log_level=a.log_level,
        replay=tuple(s for s in a.replay.split(",") if s),
        lanes_scale=a.lanes,
        keep_data=a.keep_data,
        command="raftchat fuzz " + shlex.join(a.argv),
    )
    if not 1 <= cfg.nodes <= 9:
        raise RunError("--nodes must be 1..9")
    if cfg.time_s <= 0 or cfg.frames < 0 or cfg.rate < 0:
        raise RunError("--time must be positive, --frames and --rate not negative")
    for spec in cfg.replay:
        target, sep, number = spec.partition(":")
        if not sep or not number.isdigit() or target not in (*TARGETS, "grpc-call"):
            raise RunError(f"--replay takes TARGET:N, got {spec!r}")
    if cfg.replay:
        extra = tuple(t.partition(":")[0] for t in cfg.replay)
        needed = {"grpc" if t == "grpc-call" else t for t in extra}
        cfg = replace(cfg, targets=tuple(t for t in TARGETS if t in needed))
    return cfg


def _progress(text: str) -> None:
    print(f"raftchat fuzz: {text}", file=sys.stderr, flush=True)


# --- the run ---------------------------------------------------------------------------------


async def _call_until_ok(
    cluster: ChaosCluster, rng: random.Random, path: str, body: dict[str, Any]
) -> None:
    code: int = 0
    answer: Any = None
    for attempt in range(60):
        node = rng.choice(cluster.serving())
        try:
            code, answer = await cluster.call(node, "POST", path, body)
        except HttpError:
            code = 0
        if code == 200:
            return
        await trio.sleep(0.25 * min(attempt + 1, 4))
    raise RunError(f"setup {path} kept failing: {code} {answer}")


async def _fuzz_setup(
    cluster: ChaosCluster, workload: ChatWorkload, rng: random.Random
) -> FuzzContext:
    users = tuple(FuzzUser(uid, f"fzt-{rng.getrandbits(48):x}", flag) for uid, flag in FUZZ_USERS)
    for u in users:
        body = {"uid": u.uid, "token": u.token, "device_flag": u.device_flag}
        await _call_until_ok(cluster, rng, "/user/token", body)
    for g in FUZZ_GROUPS:
        body = {"channel_id": g, "channel_type": 2, "subscribers": [u.uid for u in users]}
        await _call_until_ok(cluster, rng, "/channel", body)
    protected = sorted({*workload.users, *(ch.canonical for ch in workload.channels)})
    assert not any(p.startswith(FUZZ_PREFIX) for p in protected)
    return FuzzContext(
        hosts=dict(cluster.hosts),
        users=users,
        groups=FUZZ_GROUPS,
        protected_ids=tuple(protected),
        raft_groups=SLOT_GROUPS,
        api_token=cluster.api_token,
        admin_token=cluster.admin_token,
    )


class _WorkerOutput:
    """The worker's newest stats line, and progress lines now and then."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}
        self._shown = 0.0

    def take(self, line: str, crashes: int) -> None:
        try:
            data = json.loads(line)
        except ValueError:
            return
        self.last = data
        now = time.monotonic()
        if now - self._shown >= 10.0 or data.get("type") == "final":
            self._shown = now
            per = ", ".join(f"{t} {s['frames']:,}" for t, s in data["targets"].items())
            _progress(
                f"{data['elapsed_s']:.0f} s: {data['frames']:,} frames ({per}); crashes {crashes}"
            )


async def _run_worker(
    cfg: FuzzConfig, wcfg: WorkerConfig, out_dir: Path, watch: NodeWatch
) -> dict[str, Any]:
    config_path = out_dir / "worker.json"
    config_path.write_text(json.dumps(wcfg.to_json()))
    cmd = [sys.executable, "-m", "chaos.fuzz.worker", str(config_path)]
    output = _WorkerOutput()
    root = Path(__file__).resolve().parents[2]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=None, cwd=str(root))
    assert proc.stdout is not None
    try:
        with trio.move_on_after(cfg.time_s + WORKER_GRACE_S):
            buf = b""
            async for chunk in proc.stdout:
                buf += chunk
                *lines, rest = buf.split(b"\n")
                buf = rest
                for line in lines:
                    output.take(line.decode(), len(watch.crashes))
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.terminate()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
    if output.last.get("type") != "final":
        raise RunError(f"the fuzz worker ended without its final stats (exit {proc.returncode})")
    return output.last


async def _drive(
    cfg: FuzzConfig, cluster: ChaosCluster, rec: HistoryWriter, out_dir: Path
) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    workload = ChatWorkload(cluster, rec, cfg.load, random.Random(rng.getrandbits(64)))
    _progress(f"setting up {len(workload.users)} workload users and the fuzz users")
    await workload.setup()
    ctx = await _fuzz_setup(cluster, workload, random.Random(rng.getrandbits(64)))
    watch = NodeWatch(cluster)
    facts: dict[str, Any] = {}
    async with trio.open_nursery() as watchers:
        await watch.run(watchers)
        async with trio.open_nursery() as nursery:
            await workload.run(nursery)
            _progress(f"workload running; fuzzing starts in {cfg.baseline_s:.0f} s")
            await trio.sleep(cfg.baseline_s)
            facts["rss_kib_before"] = watch.rss()
            wcfg = WorkerConfig(
                context=ctx,
                seed=cfg.seed,
                time_s=cfg.time_s,
                frames=cfg.frames,
                rate=cfg.rate,
                targets=cfg.targets,
                scenario_log=str(out_dir / "scenarios.tsv"),
                replay=cfg.replay,
                lanes_scale=cfg.lanes_scale,
            )
            targets = tuple(cfg.targets)
            start = rec.invoke("nemesis", "fuzz", NemesisValue("fuzz", "start", targets))
            start.ok()
            fuzz_start = time.monotonic()
            try:
                final = await _run_worker(cfg, wcfg, out_dir, watch)
            finally:
                fuzz_stop = time.monotonic()
                stop = rec.invoke("nemesis", "fuzz", NemesisValue("fuzz", "stop", targets))
                stop.ok()
            _progress(f"fuzzing stopped; {len(watch.crashes)} crash(es); settling")
            up = await watch.all_running(120.0)
            await trio.sleep(cfg.settle_s)
            workload.stop()
        healthy = up and await wait_healthy(cluster, 120.0)
        if not healthy:
            _progress("the cluster did not report healthy within 120 s; reading anyway")
        facts["rss_kib_after"] = watch.rss()
        members = [n for n in cluster.members() if n in cluster.serving()]
        _progress(f"final reads of {len(workload.channels)} channels from nodes {members}")
        facts["final_reads_failed"] = await workload.final_reads(members)
        facts["replicas_converged"] = await workload.digests(members)
        watch.stopping = True
        watchers.cancel_scope.cancel()
    facts.update(
        worker=final,
        context=ctx,
        window=Window(fuzz_start, fuzz_stop),
        watch=watch,
        healthy_after=healthy,
    )
    return facts


class Interrupted(Exception):
    """SIGTERM or SIGINT during the run: trio cancels every task (and stops the worker)."""


async def _watch_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            raise Interrupted


async def _main(
    cfg: FuzzConfig, cluster: ChaosCluster, rec: HistoryWriter, out_dir: Path
) -> dict[str, Any]:
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals)
            facts = await _drive(cfg, cluster, rec, out_dir)
            nursery.cancel_scope.cancel()
        return facts
    finally:
        with trio.CancelScope(shield=True):
            await cluster.http.aclose()


def _result(
    cfg: FuzzConfig, meta: dict[str, Any], facts: dict[str, Any], out: Path
) -> dict[str, Any]:
    events = load_history(out / "history.jsonl")
    verdict = check_all(events, allow_unknown_messages=False)
    window: Window = facts["window"]
    watch: NodeWatch = facts["watch"]
    worker = facts["worker"]
    crashes = []
    for c in watch.crashes:
        row = c.to_json()
        row["suspects"] = suspects(out / "scenarios.tsv", c, cfg.seed)
        crashes.append(row)
    nodes = {}
    for n, host in sorted(meta["hosts"].items()):
        node = int(n)
        nodes[n] = {
            "host": host,
            "rss_kib_before": facts["rss_kib_before"].get(node),
            "rss_kib_after": facts["rss_kib_after"].get(node),
            "rss_kib_peak": watch.rss_peak_kib.get(node),
            "crashes": sum(1 for c in watch.crashes if c.node == node),
        }
    fuzz_s = window.stop - window.start
    history = History.of(events)
    result: dict[str, Any] = {
        "meta": meta,
        "fuzz_s": round(fuzz_s, 1),
        "frames_total": worker["frames"],
        "frames_per_s": worker["frames"] / fuzz_s if fuzz_s > 0 else 0.0,
        "targets": worker["targets"],
        "nodes": nodes,
        "crashes": crashes,
        "restarts": watch.restarts,
        "stalls": {
            "probes": probe_stalls(watch.probes, window),
            "sends": send_latency(history, window),
        },
        "checkers": {
            "valid": verdict.valid,
            "failed": verdict.failed,
            "counts": checker_counts(verdict),
        },
        "server_errors": server_errors(worker["targets"]),
        "log_errors": log_errors({int(n): out / "nodes" / f"node{n}.log" for n in meta["hosts"]}),
        "healthy_after": facts["healthy_after"],
        "final_reads_failed": facts["final_reads_failed"],
        "replicas_converged": facts["replicas_converged"],
    }
    result["failures"] = judge(result)
    result["valid"] = not result["failures"]
    (out / "verdict.json").write_text(
        json.dumps({"valid": verdict.valid, "meta": meta, **verdict.to_json()}, indent=2) + "\n"
    )
    write_report(out / "report.html", events, verdict, meta)
    (out / "fuzz.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run(cfg: FuzzConfig) -> int:
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-fuzz-seed{cfg.seed}"
    out = Path(cfg.out).resolve() / name
    out.mkdir(parents=True, exist_ok=False)
    data_root = Path(tempfile.mkdtemp(prefix="raftchat-fuzz-"))
    settings = {"RAFTCHAT_LOG_LEVEL": cfg.log_level}
    cluster = ChaosCluster(
        data_root, range(1, cfg.nodes + 1), host_base=cfg.host_base, settings=settings, gids=False
    )
    try:
        ensure_ports_free(cluster.hosts, SLOT_GROUPS)
    except NodeStartError as e:
        raise RunError(str(e)) from None
    meta: dict[str, Any] = {
        "run": name,
        "seed": cfg.seed,
        "revision": revision(),
        "command": cfg.command,
        "nodes": cfg.nodes,
        "host_base": cfg.host_base,
        "hosts": {str(n): h for n, h in cluster.hosts.items()},
        "time_s": cfg.time_s,
        "frames_budget": cfg.frames,
        "rate": cfg.rate,
        "targets": list(cfg.targets),
        "replay": list(cfg.replay),
        "nemesis": ["fuzz"],
    }
    _progress(f"run {name}: seed {cfg.seed}, {cfg.nodes} nodes on {cfg.host_base}.1x, in {out}")
    try:
        with HistoryWriter(out / "history.jsonl") as rec:
            try:
                cluster.start()
            except NodeStartError as e:
                raise RunError(str(e)) from None
            facts = trio.run(_main, cfg, cluster, rec, out)
    finally:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            cluster.stop()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        nodes_dir = out / "nodes"
        nodes_dir.mkdir(exist_ok=True)
        for log in data_root.glob("node*.log"):
            shutil.copy(log, nodes_dir / log.name)
        if cfg.keep_data:
            _progress(f"node data kept in {data_root}")
        else:
            shutil.rmtree(data_root, ignore_errors=True)
    _progress("checking the history")
    result = _result(cfg, meta, facts, out)
    print(render_text(result), flush=True)
    print(f"raftchat fuzz: results in {out}", flush=True)
    if not result["valid"]:
        return 1
    if facts["final_reads_failed"] or not facts["replicas_converged"]:
        print("raftchat fuzz: INCONCLUSIVE: replicas unconverged or final reads failed")
        return 2
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_fuzz(args: argparse.Namespace) -> int:
    if not hasattr(args, "argv"):
        args.argv = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run(config_from_args(args))
    except RunError as e:
        print(f"raftchat fuzz: {e}", file=sys.stderr)
        return 2
    except BaseException as e:
        stops = (KeyboardInterrupt, Interrupted)
        if isinstance(e, stops) or (
            isinstance(e, BaseExceptionGroup) and e.subgroup(stops) is not None
        ):
            print("raftchat fuzz: interrupted; nodes stopped", file=sys.stderr)
            return 130
        if not isinstance(e, Exception):
            raise
        traceback.print_exc()
        print(f"raftchat fuzz: the run broke: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raftchat fuzz")
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return run_fuzz(args)


if __name__ == "__main__":
    sys.exit(main())
