"""The fuzzing process: ``python -m chaos.fuzz.worker CONFIG.json``.

It runs apart from the runner, which also runs the workload, so that the fuzzer's CPU use
cannot delay the workload's own reads and show up as server stalls. Each target has a few lanes
(concurrent connections); a lane takes the target's next connection number, makes that
connection's scenario from ``(seed, target, number)`` and runs it. Every scenario start goes to
the scenario log (``monotonic-time target number node port kind``), which the runner reads to
name the connections that preceded a crash; ``--replay`` runs such connections again.

Output on stdout, one JSON object per line: ``{"type": "stats", ...}`` every couple of seconds,
``{"type": "final", ...}`` at the end. The worker stops at its deadline, once the frame budget
is spent, or on SIGTERM.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import IO, Any

import trio

from . import http, raft, rpc, tcp, ws
from .context import FuzzContext
from .executor import Limiter, TargetStats, run_scenario
from .grpc_calls import GrpcCaller, record
from .scenario import Scenario, scenario_rng

MAKERS: dict[str, Callable[[FuzzContext, Random], Scenario]] = {
    "tcp": tcp.make,
    "ws": ws.make,
    "http": http.make,
    "raft": raft.make,
    "grpc": rpc.make,
}
TARGETS = tuple(MAKERS)
LANES = {"tcp": 6, "ws": 6, "http": 4, "raft": 4, "grpc": 3}
GRPC_CALL_LANES = 1
"""Lanes of grpcio calls (part of the ``grpc`` target); each call blocks a thread."""
STATS_EVERY_S = 2.0
REFUSED_PAUSE_S = 0.25
DEADLINE_GRACE_S = 2.0
REPLAY_PAUSE_S = 3.0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    context: FuzzContext
    seed: int
    time_s: float
    frames: int = 0
    """Stop once this many frames were sent in total (0: only the deadline counts)."""
    rate: float = 0.0
    """Frames per second over all targets (0: as fast as it goes)."""
    targets: tuple[str, ...] = TARGETS
    scenario_log: str = ""
    replay: tuple[str, ...] = ()
    """``target:number`` connections to run one after another instead of fuzzing."""
    lanes_scale: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "context": self.context.to_json(),
            "seed": self.seed,
            "time_s": self.time_s,
            "frames": self.frames,
            "rate": self.rate,
            "targets": list(self.targets),
            "scenario_log": self.scenario_log,
            "replay": list(self.replay),
            "lanes_scale": self.lanes_scale,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WorkerConfig:
        return cls(
            context=FuzzContext.from_json(d["context"]),
            seed=int(d["seed"]),
            time_s=float(d["time_s"]),
            frames=int(d.get("frames", 0)),
            rate=float(d.get("rate", 0.0)),
            targets=tuple(d.get("targets", TARGETS)),
            scenario_log=str(d.get("scenario_log", "")),
            replay=tuple(d.get("replay", ())),
            lanes_scale=float(d.get("lanes_scale", 1.0)),
        )


@dataclass
class Worker:
    cfg: WorkerConfig
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    stats: dict[str, TargetStats] = field(init=False)
    started: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.stats = {t: TargetStats() for t in self.cfg.targets}
        self._numbers = {t: itertools.count() for t in (*self.cfg.targets, "grpc-call")}
        self._log: IO[str] | None = None
        self._deadline = 0.0

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.stats.values())

    def _done(self) -> bool:
        if trio.current_time() >= self._deadline:
            return True
        return bool(self.cfg.frames) and self.frames >= self.cfg.frames

    def _note(self, sc: Scenario, number: int) -> None:
        if self._log is not None:
            self._log.write(
                f"{time.monotonic():.3f}\t{sc.target}\t{number}\t{sc.node}\t{sc.port}\t{sc.kind}\n"
            )

    async def _one(self, target: str, number: int, limiter: Limiter) -> None:
        ctx = self.cfg.context
        stats = self.stats[target]
        replay = f"{target}:{number}"
        try:
            sc = MAKERS[target](ctx, scenario_rng(self.cfg.seed, target, number))
            self._note(sc, number)
            await run_scenario(sc, ctx.hosts[sc.node], stats, limiter, replay)
        except Exception as e:
            stats.fuzzer_errors += 1
            tb = traceback.format_exception(e)[-6:]
            stats.add_findings(
                [{"kind": "fuzzer_error", "error": repr(e), "traceback": tb}], replay
            )

    async def _lane(self, target: str, limiter: Limiter) -> None:
        stats = self.stats[target]
        while not self._done():
            refused = stats.refused
            await self._one(target, next(self._numbers[target]), limiter)
            if stats.refused > refused:
                await trio.sleep(REFUSED_PAUSE_S)  # a node down or restarting: do not spin

    async def _call(self, caller: GrpcCaller, number: int, limiter: Limiter) -> str:
        """One grpcio call; returns its status name."""
        call = caller.plan(self.cfg.seed, number)
        await limiter.take(1)
        if self._log is not None:
            port = call.port
            self._log.write(
                f"{time.monotonic():.3f}\tgrpc-call\t{number}\t{call.node}\t{port}\tgrpcio\n"
            )
        result = await trio.to_thread.run_sync(caller.call, call)
        record(self.stats["grpc"], result, f"grpc-call:{number}")
        return result[1]

    async def _call_lane(self, caller: GrpcCaller, limiter: Limiter) -> None:
        while not self._done():
            status = await self._call(caller, next(self._numbers["grpc-call"]), limiter)
            if status == "UNAVAILABLE":
                await trio.sleep(REFUSED_PAUSE_S)  # the node is down or restarting

    async def _replay(self, caller: GrpcCaller | None, limiter: Limiter) -> None:
        """The given connections one after another, with a pause after each so that a crash
        is attributed to the last connection before it (the runner lists it first)."""
        for spec in self.cfg.replay:
            target, _, number = spec.partition(":")
            if target == "grpc-call" and caller is not None:
                await self._call(caller, int(number), limiter)
            elif target in self.stats:
                await self._one(target, int(number), limiter)
            await trio.sleep(REPLAY_PAUSE_S)

    def _emit(self, kind: str) -> None:
        line = {
            "type": kind,
            "elapsed_s": round(trio.current_time() - self.started, 3),
            "frames": self.frames,
            "targets": {t: s.to_json() for t, s in self.stats.items()},
        }
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()

    async def _report(self) -> None:
        while True:
            await trio.sleep(STATS_EVERY_S)
            if self._log is not None:
                self._log.flush()
            self._emit("stats")

    async def run(self) -> None:
        self.started = trio.current_time()
        self._deadline = self.started + self.cfg.time_s
        limiter = Limiter(self.cfg.rate)
        caller = GrpcCaller(self.cfg.context) if "grpc" in self.cfg.targets else None
        log_path = Path(self.cfg.scenario_log) if self.cfg.scenario_log else None
        self._log = open(log_path, "a") if log_path else None  # noqa: SIM115 - closed below
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._report)
                    nursery.start_soon(_stop_on, signals, nursery.cancel_scope)
                    async with trio.open_nursery() as lanes:
                        if not self.cfg.replay:
                            # Connections still open at the deadline get a moment, not max_s.
                            lanes.cancel_scope.deadline = self._deadline + DEADLINE_GRACE_S
                        if self.cfg.replay:
                            lanes.start_soon(self._replay, caller, limiter)
                        else:
                            for target in self.cfg.targets:
                                n = max(1, round(LANES.get(target, 2) * self.cfg.lanes_scale))
                                for _ in range(n):
                                    lanes.start_soon(self._lane, target, limiter)
                            if caller is not None:
                                for _ in range(GRPC_CALL_LANES):
                                    lanes.start_soon(self._call_lane, caller, limiter)
                    nursery.cancel_scope.cancel()
        finally:
            if self._log is not None:
                self._log.close()
            if caller is not None:
                caller.close()
            self._emit("final")


async def _stop_on(signals: Any, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cfg = WorkerConfig.from_json(json.loads(Path(args[0]).read_text()))
    trio.run(Worker(cfg).run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
