"""This node's replicas of Raft groups: where each lives on disk and on the network, and how one
is opened (started empty or from its data) or dropped (stopped and deleted).

Group 0 is the controller (``node/controller.py``); groups 1.. are slot groups, each with a
send pipeline (``node/groups/``). Every group of a node listens on ``cluster.raft_port + group``.
"""

from __future__ import annotations

import concurrent.futures
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from cluster.raft.conf import RaftTiming, make_conf
from cluster.raft.driver import RaftDriver
from cluster.raft.group import ReplicatedGroup
from cluster.raft.snapshot import CheckpointSnapshots

from .config import Config
from .dropped_groups import clear_dropped, mark_dropped
from .groups.local import CommitFlusher, LocalGroup
from .groups.machine import GroupMachine
from .groups.pipeline import GroupPipeline
from .log import get_logger
from .router import Router
from .sabotage import ACK_WITHOUT_COMMIT, SKIP_DEDUPE, AckCounter
from .storage import Store

log = get_logger("node")


@dataclass(frozen=True)
class RaftSettings:
    """What every group's pysyncobj gets: its password (a pair while it changes,
    ``cluster/raft/wire.py``) and its timing."""

    passwords: str | tuple[str, ...]
    timing: RaftTiming


def raft_timing(config: Config) -> RaftTiming:
    c = config.cluster
    return RaftTiming(
        heartbeat_s=c.heartbeat_s,
        election_min_s=c.election_min_s,
        election_max_s=c.election_max_s,
        connection_timeout_s=c.election_max_s,
        tick_interval_s=c.heartbeat_s / 2,
    )


class Replicas:
    def __init__(
        self,
        config: Config,
        datadir: Path,
        raft: RaftSettings,
        router: Router,
        driver: RaftDriver,
        flusher: CommitFlusher,
        observe_commit: Callable[[float], None],
    ) -> None:
        self._config = config
        self._datadir = datadir
        self._raft = raft
        self._router = router
        self._driver = driver
        self._flusher = flusher
        self._observe_commit = observe_commit
        self.stores: dict[int, Store] = {}
        # Tests only (``testing.sabotage``; the config refuses it without the guard variable).
        sabotage = config.testing.sabotage
        self._fake_acks = AckCounter() if sabotage == ACK_WITHOUT_COMMIT else None
        self._skip_dedupe = sabotage == SKIP_DEDUPE

    # --- addresses --------------------------------------------------------------------------

    def raft_address(self, node_id: int, group: int) -> str:
        """The Raft address of a member's replica of ``group``."""
        return self.raft_address_at(self._router.placement.nodes[node_id], group)

    def raft_address_at(self, host: str, group: int) -> str:
        """The Raft address of ``group`` on ``host`` (of a node the map may not list yet)."""
        return f"{host}:{self._config.cluster.raft_port + group}"

    def node_of_address(self, address: str) -> int | None:
        host, _, port = address.rpartition(":")
        group = int(port) - self._config.cluster.raft_port
        for node_id, node_host in self._router.placement.nodes.items():
            if node_host == host and 0 <= group <= self._config.cluster.groups:
                return node_id
        return None

    def on_driver(self, work: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``work`` on the Raft driver thread (what reads a group's Raft internals)."""
        return self._driver.call(work)

    # --- opening and dropping ---------------------------------------------------------------

    def group_dir(self, group: int) -> Path:
        name = "controller" if group == 0 else f"groups/g{group}"
        return self._datadir / name

    def open_store(self, group: int) -> Store:
        store = self.stores[group] = Store(self.group_dir(group) / "db")
        return store

    async def start_raft(
        self, group: int, members: list[int], machine: Any, snapshots: CheckpointSnapshots
    ) -> ReplicatedGroup:
        """Build the group on the driver thread. A stop does not wait for the build: the driver
        destroys whatever it has built when it stops."""
        me = self._config.node.id
        gdir = self.group_dir(group)
        address = self.raft_address(me, group)
        conf = make_conf(
            password=self._raft.passwords,
            bind_address=address,
            journal_file=str(gdir / "raft.journal"),
            dump_file=str(gdir / "raft.dump"),
            snapshots=snapshots,
            timing=self._raft.timing,
        )
        partners = [self.raft_address(n, group) for n in members if n != me]
        future = self._driver.add_group(
            f"g{group}", lambda: ReplicatedGroup(address, partners, conf, machine, snapshots)
        )
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    async def open_group(self, group: int, members: list[int]) -> None:
        """Start this node's replica of a slot group (empty if new: it catches up from the
        leader's log or a snapshot)."""
        cfg = self._config
        store = self.open_store(group)
        machine = GroupMachine(group, store, skip_dedupe=self._skip_dedupe)
        snapshots = CheckpointSnapshots(machine, self.group_dir(group) / "snapshots")
        raft = await self.start_raft(group, members, machine, snapshots)
        local = LocalGroup(group, store, machine, raft, self.node_of_address, self._flusher)
        pipeline = GroupPipeline(
            local,
            self._router.fanout.on_committed,
            commit_window_s=cfg.messages.commit_window_ms / 1000,
            max_batch=cfg.messages.max_batch,
            max_in_flight=cfg.messages.max_in_flight_batches,
            proposal_timeout_s=cfg.cluster.proposal_timeout_s,
            fake_acks=self._fake_acks,
            group_rate_limit=cfg.messages.group_rate_limit,
            observe_commit=self._observe_commit,
        )
        self._router.attach(local, pipeline)
        await trio.to_thread.run_sync(clear_dropped, self._datadir, group)
        log.info("replica opened", group=group, members=members)

    async def drop_group(self, group: int) -> None:
        """Stop this node's replica of a group that moved elsewhere, and delete its data."""
        if group not in self._router.local:
            return
        pipeline = self._router.pipelines.get(group)
        if pipeline is not None:
            with trio.move_on_after(self._config.cluster.proposal_timeout_s + 1):
                await pipeline.close()  # queued sends fail over; batches in Raft finish first
        self._router.detach(group)
        removed = self._driver.remove_group(f"g{group}")
        await trio.to_thread.run_sync(removed.result, abandon_on_cancel=True)
        store = self.stores.pop(group, None)
        if store is not None:
            store.close()
        await trio.to_thread.run_sync(mark_dropped, self._datadir, group)
        await trio.to_thread.run_sync(shutil.rmtree, self.group_dir(group), True)
        log.info("replica dropped", group=group)

    def close_stores(self) -> None:
        """Close every store, once no group's code can touch them. Without a garbage collection
        per store (~0.1 s each, most of a stop): the process ends next, and with it the hold on
        their LOCK files."""
        for store in self.stores.values():
            store.close(collect=False)
