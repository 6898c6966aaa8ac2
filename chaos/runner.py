"""``raftchat chaos run``: one Jepsen-style run from a fresh cluster to a verdict.

1. start N real node processes on 127.0.0.11, .12, ... (``--host-base``), each with its own
   group id so that iptables can cut its links;
2. set up the workload's users and channels, then run the workload for ``--time`` seconds while
   the nemesis injects faults;
3. heal everything (network, paused and killed nodes), keep the workload running a little longer
   so that recovery shows in the history, stop it;
4. wait for every slot group to have a leader and every replica to catch up, read every channel
   from every node, take each replica's digest;
5. check the history and write ``results/<run>/``: ``history.jsonl``, ``verdict.json``,
   ``report.html``, ``nodes/node<N>.log``.

The exit status is 0 when every property held, 1 when one did not, 2 when the run could not be
made or was inconclusive (a safety property without data, final reads that kept failing,
replicas that never converged). Every iptables rule and every process the run made is removed
at the end, also on Ctrl-C or SIGTERM; rules left by a run that was SIGKILLed are removed by
the next run. Runs on other addresses may share the machine: each has its own firewall chains.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import trio

from launcher.devcluster import NodeStartError, ensure_ports_free

from . import net
from .checkers import SAFETY, Verdict, check_all
from .checkers.flood import FLOOD_SAFETY, check_flood_run
from .cluster import ChaosCluster, ClusterError
from .flood import FloodConfig, FloodWorkload
from .history import HistoryWriter, load_history
from .http import HttpError
from .nemesis import FAMILIES, Nemesis, Timing, parse_families
from .report import write_report
from .workload import ChatWorkload, WorkloadConfig

SABOTAGE_MODES = ("ack-without-commit", "skip-dedupe")
RECOVERY_BOUND_S = 120.0
"""A channel or group written during a fault that takes longer than this after the heal to
accept writes again makes the run invalid (availability is otherwise only measured). A channel's
recovery includes its senders' retry backoff and is up to ~50 s in a 10-minute `all` run while
slot groups recover within seconds, hence the margin: this catches a cluster that stays down."""


class RunError(Exception):
    pass


class Interrupted(Exception):
    """SIGTERM or SIGINT while the workload runs: trio cancels every task cleanly first."""


@dataclass(frozen=True, slots=True)
class RunConfig:
    nodes: int = 5
    time_s: float = 120.0
    nemesis: tuple[str, ...] = FAMILIES
    workload: str = "chat"
    seed: int = 0
    out: str = "results"
    host_base: str = "127.0.0"
    after_heal_s: float = 10.0
    """How long the workload keeps going after the final heal."""
    timing: Timing = field(default_factory=Timing)
    load: WorkloadConfig = field(default_factory=WorkloadConfig)
    flood: FloodConfig = field(default_factory=FloodConfig)
    sabotage: str = ""
    keep_data: bool = False
    quick: bool = False
    command: str = ""
    """The command line that made the run, for the report (reproduce with the same seed)."""


QUICK = {
    "nodes": 3,
    "time_s": 60.0,
    "after_heal_s": 8.0,
    "timing": Timing(quiet_s=(2.0, 5.0), hold_s=(3.0, 7.0)),
    "load": WorkloadConfig(users=8, group_channels=3, person_channels=4, send_gap_s=0.6),
}
"""``--quick``: three nodes, one minute of faults, a lighter load; under 5 minutes with setup,
recovery and checks, so that it can run in ``make test``."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=None, help="cluster size (default 5; quick 3)")
    p.add_argument("--time", type=float, default=None, help="seconds of faults (default 120)")
    p.add_argument(
        "--nemesis",
        default="all",
        help=f"comma-separated: {', '.join(FAMILIES)}, all or none (default all)",
    )
    p.add_argument(
        "--workload",
        default="chat",
        choices=["chat", "flood"],
        help="chat: users, reads, conversation lists (docs/chaos.md); flood: as many acked "
        "messages as the cluster takes, windowed, from load processes",
    )
    flood = FloodConfig()
    p.add_argument(
        "--sessions", type=int, default=None, help=f"flood: sessions (default {flood.sessions})"
    )
    p.add_argument(
        "--channels",
        type=int,
        default=None,
        help=f"flood: group channels (default {flood.channels})",
    )
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help=f"flood: SENDs in flight per session (default {flood.window})",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="flood: total new messages/s; 0 = as fast as the windows allow (default 0)",
    )
    p.add_argument(
        "--load-workers",
        type=int,
        default=None,
        help=f"flood: load-generator processes (default {flood.workers})",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    p.add_argument("--out", default="results", help="parent of the run's results folder")
    p.add_argument(
        "--host-base",
        default="127.0.0",
        help="the first three octets of the node addresses (node n gets .<10+n>)",
    )
    p.add_argument("--quick", action="store_true", help="3 nodes, 60 s, lighter load (CI)")
    p.add_argument("--keep-data", action="store_true", help="keep the nodes' data directories")
    p.add_argument(
        "--sabotage",
        default="",
        choices=["", *SABOTAGE_MODES],
        help="TESTS ONLY: start the nodes with a deliberate bug, to show the checkers catch it",
    )


def config_from_args(a: argparse.Namespace) -> RunConfig:
    cfg = RunConfig()
    if a.quick:
        cfg = replace(cfg, quick=True, **QUICK)  # type: ignore[arg-type]
    try:
        families = tuple(parse_families(a.nemesis))
    except ValueError as e:
        raise RunError(str(e)) from None
    cfg = replace(
        cfg,
        nemesis=families,
        workload=a.workload,
        seed=a.seed if a.seed is not None else int(time.time()) % 100_000,
        out=a.out,
        host_base=a.host_base,
        sabotage=a.sabotage,
        keep_data=a.keep_data,
        command="raftchat chaos run " + shlex.join(a.argv),
    )
    if a.nodes is not None:
        cfg = replace(cfg, nodes=a.nodes)
    if a.time is not None:
        cfg = replace(cfg, time_s=a.time)
    flood = {
        name: value
        for name, value in (
            ("sessions", a.sessions),
            ("channels", a.channels),
            ("window", a.window),
            ("rate", a.rate),
            ("workers", a.load_workers),
        )
        if value is not None
    }
    if flood and cfg.workload != "flood":
        raise RunError("--sessions, --channels, --window, --rate, --load-workers are for flood")
    cfg = replace(cfg, flood=replace(cfg.flood, **flood))
    f = cfg.flood
    if min(f.sessions, f.channels, f.window, f.workers) < 1 or f.rate < 0:
        raise RunError("flood: sessions, channels, window and workers must be >= 1, rate >= 0")
    if f.channels > f.sessions:
        raise RunError("flood: every channel needs a sender (--channels <= --sessions)")
    if not 1 <= cfg.nodes <= 9:
        raise RunError("--nodes must be 1..9")
    if cfg.time_s <= 0:
        raise RunError("--time must be positive")
    return cfg


def _progress(text: str) -> None:
    print(f"raftchat chaos: {text}", file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


# --- the run ----------------------------------------------------------------------------------


async def wait_healthy(cluster: ChaosCluster, timeout_s: float) -> bool:
    """Every serving member answers /health (all its groups have leaders) and has applied what
    it knows to be committed."""
    deadline = trio.current_time() + timeout_s
    while trio.current_time() < deadline:
        ok = True
        for n in cluster.serving():
            try:
                code, _ = await cluster.call(n, "GET", "/health", timeout_s=3.0)
                st = await cluster.status(n)
            except (HttpError, ClusterError):
                ok = False
                break
            local = [g for g in st.get("groups", []) if g.get("local")]
            if code != 200 or any(g["raft_applied"] < g["commit_index"] for g in local):
                ok = False
                break
        if ok:
            return True
        await trio.sleep(1.0)
    return False


async def _drive(
    cfg: RunConfig,
    cluster: ChaosCluster,
    firewall: net.Firewall | None,
    rec: HistoryWriter,
    out: Path,
) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    workload: ChatWorkload | FloodWorkload
    if cfg.workload == "flood":
        workload = FloodWorkload(
            cluster, rec, cfg.flood, random.Random(rng.getrandbits(64)), out / "flood"
        )
    else:
        workload = ChatWorkload(cluster, rec, cfg.load, random.Random(rng.getrandbits(64)))
    nemesis = Nemesis(
        cluster,
        firewall,
        rec,
        random.Random(rng.getrandbits(64)),
        cfg.nemesis,
        cfg.timing,
        cfg.nodes,
    )
    _progress(f"setting up {len(workload.users)} users and their channels")
    await workload.setup()
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        await workload.run(nursery)
        _progress(
            f"workload running; nemesis {', '.join(cfg.nemesis) or 'none'} for {cfg.time_s:.0f} s"
        )
        await nemesis.run(trio.current_time() + cfg.time_s)
        _progress(f"healing ({nemesis.faults} faults injected)")
        await nemesis.heal_all()
        await trio.sleep(cfg.after_heal_s)
        workload.stop()
        # Senders finish the attempt in flight (bounded by their send timeout), then return.
    faulted_s = time.monotonic() - started
    _progress("waiting for the cluster to recover")
    healthy = await wait_healthy(cluster, 120.0)
    if not healthy:
        _progress("the cluster did not report healthy within 120 s; reading anyway")
    await cluster.refresh_members()
    members = [n for n in cluster.members() if n in cluster.serving()]
    _progress(f"final reads of {len(workload.channels)} channels from nodes {members}")
    read_started = time.monotonic()
    failed_reads = await workload.final_reads(members)
    read_s = time.monotonic() - read_started
    converged = await workload.digests(members)
    if not converged:
        _progress("replicas did not converge within 60 s: replica agreement is not checked")
    extra = workload.facts() if isinstance(workload, FloodWorkload) else {}
    return {
        **extra,
        "final_reads_s": round(read_s, 1),
        "faults": nemesis.summary(),
        "workload_s": round(faulted_s, 1),
        "healthy_after_heal": healthy,
        "final_reads_failed": failed_reads,
        "replicas_converged": converged,
        "members_at_end": members,
        "channels": len(workload.channels),
        "users": len(workload.users),
    }


async def _watch_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            raise Interrupted


async def _main(
    cfg: RunConfig,
    cluster: ChaosCluster,
    firewall: net.Firewall | None,
    rec: HistoryWriter,
    out: Path,
) -> dict[str, Any]:
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals)
            facts = await _drive(cfg, cluster, firewall, rec, out)
            nursery.cancel_scope.cancel()
    finally:
        # The nodes' HTTP clients belong to this trio run.
        with trio.CancelScope(shield=True):
            await cluster.http.aclose()
    return facts


_VOLUME_COUNTS = frozenset({"messages", "sends", "recvs", "reads", "observations"})
"""Checker counts that say how much a property was checked on (with every ``*checked``)."""


def _counts(verdict: Verdict, events: int) -> dict[str, Any]:
    r = verdict.results
    ops = {
        "events": events,
        "acked_sends": r["lost_acked"].counts.get("acked"),
        "final_reads": r["lost_acked"].counts.get("final_reads"),
    }
    for name, result in r.items():
        for key, value in result.counts.items():
            if key.endswith("checked") or key in _VOLUME_COUNTS:
                ops[f"{name}.{key}"] = value
    return ops


def required_properties(cfg: RunConfig) -> tuple[str, ...]:
    """The safety properties a run must have data for. A single-node cluster has no second
    replica to compare, so replica agreement cannot be required of it."""
    props = FLOOD_SAFETY if cfg.workload == "flood" else SAFETY
    if cfg.nodes < 2:
        return tuple(p for p in props if p != "replica_divergence")
    return props


def unchecked_reasons(facts: dict[str, Any]) -> list[str]:
    """What the run could not look at: each makes an otherwise clean verdict inconclusive."""
    out = []
    if facts.get("final_reads_failed"):
        out.append(f"{facts['final_reads_failed']} final reads kept failing")
    if not facts.get("replicas_converged", True):
        out.append("replicas never reached one applied index: agreement not checked")
    return out


def run(cfg: RunConfig) -> int:
    families = set(cfg.nemesis)
    if "partition" in families and (why := net.problem()):
        raise RunError(f"the partition nemesis needs iptables: {why}")
    kind = ("quick" if cfg.quick else "run") + ("-flood" if cfg.workload == "flood" else "")
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-seed{cfg.seed}"
    out = Path(cfg.out).resolve() / name
    out.mkdir(parents=True, exist_ok=False)
    data_root = Path(tempfile.mkdtemp(prefix="raftchat-chaos-"))
    settings = {"RAFTCHAT_LOG_LEVEL": "info"}
    if cfg.sabotage:
        settings.update({"RAFTCHAT_TESTING_SABOTAGE": cfg.sabotage, "RAFTCHAT_ALLOW_SABOTAGE": "1"})
    cluster = ChaosCluster(
        data_root, range(1, cfg.nodes + 1), host_base=cfg.host_base, settings=settings
    )
    spare = {n: cluster.host(n) for n in range(1, cfg.nodes + 3)}  # joiners included
    try:
        ensure_ports_free(spare, 8)
    except NodeStartError as e:
        raise RunError(str(e)) from None
    net.remove_stale()
    firewall = net.Firewall(cluster.hosts, run_id=name) if "partition" in families else None
    cluster.firewall = firewall
    meta: dict[str, Any] = {
        "run": name,
        "nodes": cfg.nodes,
        "time_s": cfg.time_s,
        "nemesis": list(cfg.nemesis),
        "workload": cfg.workload,
        "seed": cfg.seed,
        "quick": cfg.quick,
        "sabotage": cfg.sabotage or None,
        "hosts": _hosts(cluster),
        "firewall_chain": firewall.chain if firewall is not None else None,
        "revision": revision(),
        "command": cfg.command,
        "load": asdict(cfg.flood if cfg.workload == "flood" else cfg.load),
    }
    history_path = out / "history.jsonl"
    _progress(f"run {name}: {cfg.nodes} nodes on {cfg.host_base}.1x, results in {out}")
    try:
        if firewall is not None:
            firewall.install()
        with HistoryWriter(history_path) as rec:
            try:
                cluster.start()
            except NodeStartError as e:
                raise RunError(str(e)) from None
            facts = trio.run(_main, cfg, cluster, firewall, rec, out)
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave rules or nodes behind.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            if firewall is not None:
                firewall.uninstall()
        finally:
            cluster.stop()
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
    events = load_history(history_path)
    check_started = time.monotonic()
    if cfg.workload == "flood":
        verdict, load = check_flood_run(
            out / "flood",
            events,
            required=required_properties(cfg),
            unchecked=unchecked_reasons(facts),
        )
        facts["flood"] = {**facts.get("flood", {}), **load}
    else:
        verdict = check_all(
            events,
            recovery_bound_s=RECOVERY_BOUND_S,
            required=required_properties(cfg),
            unchecked=unchecked_reasons(facts),
        )
    facts["check_s"] = round(time.monotonic() - check_started, 1)
    # Linux reports kilobytes: the runner's peak, its final reads and the check included.
    facts["runner_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    meta.update(facts)
    meta["hosts"] = _hosts(cluster)  # joiners included
    meta["counts"] = _counts(verdict, len(events))
    result = {"meta": meta, **verdict.to_json()}
    (out / "verdict.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out / "report.html", events, verdict, meta)
    if verdict.status == "invalid":
        status = f"INVALID: {', '.join(verdict.failed)}"
    elif verdict.status == "inconclusive":
        # Nothing was seen to break, but not everything could be looked at.
        reasons = [*verdict.unchecked]
        if verdict.missing:
            reasons.append(f"no data for {', '.join(verdict.missing)}")
        status = f"INCONCLUSIVE: {'; '.join(reasons)}"
    else:
        status = "VALID"
    print(f"raftchat chaos: {status} ({len(events)} events; {out})", flush=True)
    return {"valid": 0, "invalid": 1, "inconclusive": 2}[verdict.status]


def _hosts(cluster: ChaosCluster) -> dict[str, str]:
    """Every node the run launched, in id order: the initial ones and every joiner (a join the
    cluster refused launched nothing and is not listed)."""
    return {str(n): cluster.hosts[n] for n in sorted(cluster.nodes)}


def run_chaos(args: argparse.Namespace) -> int:
    if not hasattr(args, "argv"):
        args.argv = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run(config_from_args(args))
    except RunError as e:
        print(f"raftchat chaos: {e}", file=sys.stderr)
        return 2
    except BaseException as e:
        # Inside trio.run the interrupt may arrive wrapped in an exception group.
        stops = (KeyboardInterrupt, Interrupted)
        if isinstance(e, stops) or (
            isinstance(e, BaseExceptionGroup) and e.subgroup(stops) is not None
        ):
            print("raftchat chaos: interrupted; rules and processes removed", file=sys.stderr)
            return 130
        if not isinstance(e, Exception):
            raise
        # A broken run is not a verdict (exit 1 means "a property failed").
        traceback.print_exc()
        print(f"raftchat chaos: the run broke: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raftchat chaos run")
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return run_chaos(args)


if __name__ == "__main__":
    sys.exit(main())
