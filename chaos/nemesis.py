"""Faults, and the schedule that injects them while the workload runs.

A nemesis *family* is one loop: wait, start a fault, hold it, stop it, again. Families chosen
together run side by side, so their faults overlap (``all`` runs every family). Every start and
stop is an operation of process ``nemesis`` in the history, with the fault's kind and targets,
so checkers can line faults up with what clients saw.

=============  ==============================================================================
family         faults
=============  ==============================================================================
partition      one node isolated; a majority/minority split; overlapping majorities (a ring);
               the leader of a slot group isolated
kill           SIGKILL of a node (half the time the leader of a slot group), restart at the stop
pause          SIGSTOP of a node (half the time a leader), SIGCONT at the stop
membership     a new node joins, or a node beyond the initial count leaves (under faults too)
=============  ==============================================================================

At most a minority of the members is killed or paused at a time, and a node taking part in a
membership change is not also killed: the suite tests faults a Raft cluster is built to survive
and checks safety under all of them; availability is measured, not assumed.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .cluster import ChaosCluster, ClusterError
from .history import NemesisValue, Recorder
from .http import HttpError
from .net import Firewall, FirewallError

FAMILIES = ("partition", "kill", "pause", "membership")


@dataclass(frozen=True, slots=True)
class Timing:
    quiet_s: tuple[float, float] = (3.0, 8.0)
    """Pause between two faults of one family (uniform)."""
    hold_s: tuple[float, float] = (4.0, 10.0)
    """How long a fault lasts."""


def parse_families(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if "all" in names:
        return list(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES and n != "none"]
    if unknown:
        raise ValueError(
            f"unknown nemesis {', '.join(unknown)} (choose from {', '.join(FAMILIES)}, all, none)"
        )
    return [n for n in names if n != "none"]


class Nemesis:
    def __init__(
        self,
        cluster: ChaosCluster,
        firewall: Firewall | None,
        recorder: Recorder,
        rng: random.Random,
        families: Sequence[str],
        timing: Timing,
        initial_nodes: int,
    ) -> None:
        self.cluster = cluster
        self.firewall = firewall
        self.rec = recorder
        self.rng = rng
        self.families = list(families)
        self.timing = timing
        self.initial_nodes = initial_nodes
        self.down: set[int] = set()
        """Nodes killed or paused right now."""
        self.changing: set[int] = set()
        """Nodes joining or leaving right now."""
        self.faults = 0
        self.counts: dict[str, int] = {}
        self._seq = 0

    # --- the schedule ----------------------------------------------------------------------

    async def run(self, until: float) -> None:
        """Run every family until trio time ``until``; each fault in progress is stopped."""
        async with trio.open_nursery() as nursery:
            for family in self.families:
                nursery.start_soon(self._loop, family, until)
        # With no family (``--nemesis none``) the workload still runs for the whole time.
        await trio.sleep_until(until)

    async def _loop(self, family: str, until: float) -> None:
        step = {
            "partition": self._partition,
            "kill": self._kill,
            "pause": self._pause,
            "membership": self._membership,
        }[family]
        while True:
            await trio.sleep(self.rng.uniform(*self.timing.quiet_s))
            if trio.current_time() >= until:
                return
            hold = min(self.rng.uniform(*self.timing.hold_s), max(until - trio.current_time(), 1.0))
            await step(hold)

    async def _fault(
        self,
        kind: str,
        targets: Sequence[int],
        start: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
        hold_s: float,
    ) -> None:
        """Record and run one fault: start, hold, stop. The stop runs even when cancelled."""
        self._seq += 1
        fault_id = f"{kind}-{self._seq}"
        names = tuple(str(t) for t in targets)
        op = self.rec.invoke("nemesis", "nemesis", NemesisValue(kind, "start", names, fault_id))
        try:
            await start()
        except (ClusterError, HttpError, FirewallError, OSError) as e:
            op.fail()
            self._log(f"{fault_id} could not start: {e}")
            return
        op.ok()
        self.faults += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        try:
            await trio.sleep(hold_s)
        finally:
            with trio.CancelScope(shield=True):
                stop_op = self.rec.invoke(
                    "nemesis", "nemesis", NemesisValue(kind, "stop", names, fault_id)
                )
                try:
                    await stop()
                    stop_op.ok()
                except (ClusterError, HttpError, FirewallError, OSError) as e:
                    stop_op.info()
                    self._log(f"{fault_id} stop: {e}")

    def _log(self, text: str) -> None:
        print(f"nemesis: {text}", flush=True)

    # --- targets -----------------------------------------------------------------------------

    async def _leader_of_random_group(self) -> int | None:
        for n in self.cluster.serving():
            try:
                st = await self.cluster.status(n)
            except (HttpError, ClusterError):
                continue
            named = [g.get("leader") for g in st.get("groups", []) if g.get("group", 0) > 0]
            leaders: list[int] = [int(x) for x in named if x is not None]
            if leaders:
                return self.rng.choice(leaders)
        return None

    def _may_take_down(self) -> list[int]:
        """Nodes that can be killed or paused without taking down a majority of members."""
        members = self.cluster.members()
        budget = (len(members) - 1) // 2 - len(self.down & set(members))
        if budget <= 0:
            return []
        return [n for n in members if n not in self.down and n not in self.changing]

    async def _victim(self) -> int | None:
        """A node to kill or pause, already reserved in ``down``: the budget is checked again
        after the last await, so the kill and pause loops cannot both spend it."""
        leader = await self._leader_of_random_group() if self.rng.random() < 0.5 else None
        allowed = self._may_take_down()
        if not allowed:
            return None
        victim = leader if leader in allowed else self.rng.choice(allowed)
        self.down.add(victim)
        return victim

    # --- families ----------------------------------------------------------------------------

    async def _partition(self, hold_s: float) -> None:
        fw = self.firewall
        if fw is None:
            return
        members = self.cluster.members()
        shape = self.rng.choice(["one", "half", "ring", "leader"])
        if shape == "leader":
            leader = await self._leader_of_random_group()
            target = leader if leader is not None else self.rng.choice(members)

            async def start() -> None:
                await trio.to_thread.run_sync(fw.isolate, target)

            kind, targets = "partition-leader", [target]
        elif shape == "one":
            target = self.rng.choice(members)

            async def start() -> None:
                await trio.to_thread.run_sync(fw.isolate, target)

            kind, targets = "partition-one", [target]
        elif shape == "half":
            shuffled = self.rng.sample(members, len(members))
            minority = shuffled[: (len(members) - 1) // 2] or shuffled[:1]
            majority = [n for n in members if n not in minority]

            async def start() -> None:
                await trio.to_thread.run_sync(fw.split, [majority, minority])

            kind, targets = "partition-half", minority
        else:
            order = self.rng.sample(members, len(members))

            async def start() -> None:
                await trio.to_thread.run_sync(fw.ring, order)

            kind, targets = "partition-ring", order

        async def heal() -> None:
            await trio.to_thread.run_sync(fw.heal)

        await self._fault(kind, targets, start, heal, hold_s)

    async def _kill(self, hold_s: float) -> None:
        victim = await self._victim()
        if victim is None:
            return

        async def start() -> None:
            await trio.to_thread.run_sync(self.cluster.kill, victim)

        async def restart() -> None:
            try:
                await trio.to_thread.run_sync(self.cluster.restart, victim)
            finally:
                self.down.discard(victim)

        await self._fault("kill", [victim], start, restart, hold_s)
        self.down.discard(victim)

    async def _pause(self, hold_s: float) -> None:
        victim = await self._victim()
        if victim is None:
            return

        async def start() -> None:
            self.cluster.pause(victim)

        async def resume() -> None:
            self.cluster.resume(victim)
            self.down.discard(victim)

        await self._fault("pause", [victim], start, resume, hold_s)
        self.down.discard(victim)

    async def _membership(self, hold_s: float) -> None:
        """A join while the cluster is at its initial size, else a leave of some member; the
        "stop" is when the change has completed (the node is serving, or gone from the map).
        Membership is read from the cluster each time: a request that timed out may still
        have taken effect."""
        members = await self.cluster.refresh_members()
        via_choices = [n for n in self.cluster.serving() if n not in self.down]
        if members is None or not via_choices:
            return
        via = self.rng.choice(via_choices)
        if len(members) <= self.initial_nodes:
            new = max(max(self.cluster.nodes), max(members)) + 1
            self.changing.add(new)

            async def join() -> None:
                await self.cluster.join(new, via)

            async def joined() -> None:
                self.changing.discard(new)

            await self._fault("join", [new], join, joined, hold_s)
            self.changing.discard(new)
            return
        candidates = [n for n in members if n not in self.down and n not in self.changing]
        if len(candidates) < 2:
            return
        leaving = self.rng.choice(candidates)
        via = self.rng.choice([n for n in candidates if n != leaving])
        self.changing.add(leaving)

        async def leave() -> None:
            await self.cluster.leave(leaving, via)

        async def left() -> None:
            # The node is drained in the background; refresh_members stops its process once
            # the map no longer lists it.
            with trio.move_on_after(60):
                while True:
                    now = await self.cluster.refresh_members()
                    if now is not None and leaving not in now:
                        break
                    await trio.sleep(1.0)

        try:
            await self._fault("leave", [leaving], leave, left, hold_s)
        finally:
            self.changing.discard(leaving)

    # --- the end -------------------------------------------------------------------------------

    async def heal_all(self) -> None:
        """Undo everything: heal the network, resume paused nodes, restart killed members."""
        if self.firewall is not None:
            await trio.to_thread.run_sync(self.firewall.heal)
        self.cluster.resume_all()
        await self.cluster.refresh_members()  # also launches members admitted behind our back
        for n in self.cluster.members():
            if not self.cluster.nodes[n].running:
                await trio.to_thread.run_sync(self.cluster.restart, n)
        self.down.clear()

    def summary(self) -> dict[str, Any]:
        return {"faults": self.faults, "by_kind": dict(sorted(self.counts.items()))}
