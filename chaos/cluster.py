"""The cluster under test: real ``raftchat node`` processes, one loopback address each, driven
from outside (signals for kills and pauses, the HTTP admin route for leaves; a node joins by
itself, started with ``cluster.join``).

Node n listens on ``<host_base>.<10 + n>`` with the standard ports and runs with the group id
:func:`chaos.net.node_gid` so that :class:`chaos.net.Firewall` can cut its links. A restarted or
joining node is launched without waiting: it may come back into a partition where its groups
have no leader, and the nemesis must not stall on it.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

from launcher.devcluster import (
    HTTP_PORT,
    NodeProcess,
    cluster_env,
    node_env,
    start_all,
    wait_all_stopped,
)

from .http import HttpError, NodeHttp
from .net import Firewall, node_gid

READY_TIMEOUT_S = 120.0
JOIN_TIMEOUT_S = 60.0
"""As long as a joining node itself keeps asking to be admitted (``node/genesis.py``)."""


class ClusterError(Exception):
    pass


class ChaosCluster:
    def __init__(
        self,
        root: Path,
        node_ids: Iterable[int],
        *,
        host_base: str = "127.0.0",
        settings: dict[str, str] | None = None,
        gids: bool = True,
    ) -> None:
        self.root = root
        self.host_base = host_base
        self.gids = gids
        """Run each node with its own group id (for partitions; needs root). The fuzzer, which
        cuts no links, runs the nodes as its own user."""
        self.password = secrets.token_urlsafe(24)
        # The API and admin tokens, as a deployment runs: every request of the workload, the
        # runner and the fuzzer passes (or, for the fuzzer's, fails) their check.
        self.api_token = secrets.token_urlsafe(24)
        self.admin_token = secrets.token_urlsafe(24)
        self.settings = {
            "RAFTCHAT_AUTH_API_TOKEN": self.api_token,
            "RAFTCHAT_AUTH_ADMIN_TOKEN": self.admin_token,
            **(settings or {}),
        }
        self.hosts: dict[int, str] = {n: self.host(n) for n in node_ids}
        self.nodes: dict[int, NodeProcess] = {}
        envs = cluster_env(self.hosts, self.password, self.settings)
        for n in self.hosts:
            self.nodes[n] = self._process(n, envs[n])
        self.http = NodeHttp(self.api_token, self.admin_token)
        self.known: set[int] = set(self.hosts)
        """The members as the newest cluster map says (:meth:`refresh_members`): a membership
        request that timed out may still have taken effect, so the runner never trusts its own
        bookkeeping over the cluster's."""
        self.removed: set[int] = set()
        """Nodes that left the cluster: their processes are stopped and stay stopped."""
        self.joining: set[int] = set()
        """Nodes launched to join that no map lists yet: not stopped for that."""
        self.paused: set[int] = set()
        self.firewall: Firewall | None = None
        """Told about every node the run starts later, so partitions cover joiners too."""

    def host(self, node_id: int) -> str:
        return f"{self.host_base}.{10 + node_id}"

    def _process(self, node_id: int, extra: dict[str, str]) -> NodeProcess:
        data = self.root / f"node{node_id}"
        return NodeProcess(
            node_id=node_id,
            data_dir=data,
            env=node_env(node_id, self.hosts[node_id], data, extra),
            log_path=self.root / f"node{node_id}.log",
            gid=node_gid(node_id) if self.gids else None,
        )

    # --- process control ------------------------------------------------------------------

    def start(self) -> None:
        start_all(list(self.nodes.values()), timeout_s=READY_TIMEOUT_S)

    def stop(self) -> None:
        wait_all_stopped(list(self.nodes.values()))

    def members(self) -> list[int]:
        """Members with a process of ours (a member the runner has not launched yet is
        launched by the next :meth:`refresh_members`)."""
        return sorted((self.known - self.removed) & set(self.nodes))

    def running(self) -> list[int]:
        return sorted(n for n, p in self.nodes.items() if p.running)

    def serving(self) -> list[int]:
        """Running, not paused, not removed: nodes a client can usefully talk to."""
        return [n for n in self.running() if n not in self.paused and n not in self.removed]

    def kill(self, node_id: int) -> None:
        self.nodes[node_id].kill()
        self.paused.discard(node_id)

    def restart(self, node_id: int) -> None:
        """Launch a stopped node again on its data directory; readiness is awaited in the
        background (the node prints its ready line once its groups have leaders)."""
        proc = self.nodes[node_id]
        if proc.running:
            return
        proc.launch()
        threading.Thread(target=self._await_ready, args=(proc,), daemon=True).start()

    @staticmethod
    def _await_ready(proc: NodeProcess) -> None:
        proc.ready_within(READY_TIMEOUT_S)

    def pause(self, node_id: int) -> None:
        self.nodes[node_id].pause()
        self.paused.add(node_id)

    def resume(self, node_id: int) -> None:
        self.nodes[node_id].resume()
        self.paused.discard(node_id)

    def resume_all(self) -> None:
        for n in list(self.paused):
            self.resume(n)

    # --- HTTP ----------------------------------------------------------------------------

    async def call(
        self, node_id: int, method: str, path: str, body: Any = None, timeout_s: float = 10.0
    ) -> tuple[int, Any]:
        return await self.http.request(
            self.hosts[node_id], HTTP_PORT, method, path, body, timeout_s=timeout_s
        )

    async def status(self, node_id: int) -> dict[str, Any]:
        code, body = await self.call(node_id, "GET", "/cluster/status", timeout_s=5.0)
        if code != 200 or not isinstance(body, dict):
            raise ClusterError(f"/cluster/status on node {node_id}: {code} {body}")
        return body

    # --- membership ----------------------------------------------------------------------

    async def newest_status(self, nodes: Iterable[int] | None = None) -> dict[str, Any] | None:
        """The status of the node (of ``nodes``, default: the serving ones) holding the newest
        cluster map; None when none answered."""
        best: dict[str, Any] | None = None
        for n in self.serving() if nodes is None else nodes:
            try:
                st = await self.status(n)
            except (HttpError, ClusterError):
                continue
            if best is None or int(st["placement_version"]) > int(best["placement_version"]):
                best = st
        return best

    async def refresh_members(self) -> set[int] | None:
        """Learn the members from the newest cluster map any serving node has, and stop the
        processes of nodes that are no longer members. None when no node answered."""
        best = await self.newest_status()
        if best is None:
            return None
        self.known = {int(k) for k in best["nodes"]}
        self.removed -= self.known  # a map that lists a node again outranks an older one
        self.joining -= self.known
        via = next(iter(self.serving()), None)
        for n in sorted(self.known - set(self.nodes)):
            if via is not None:
                # Admitted by a join whose answer was lost: it must run for its groups' sake.
                self.launch_joiner(n, via)
        for n, proc in self.nodes.items():
            if n not in self.known and n not in self.removed and n not in self.joining:
                self.removed.add(n)
                await trio.to_thread.run_sync(proc.stop)
        return set(self.known)

    async def join(self, node_id: int, via: int) -> None:
        """Launch node ``node_id`` with ``cluster.join`` = member ``via`` and wait until a map
        lists it: its own signed call admits it (nothing else can)."""
        self.joining.add(node_id)
        self.launch_joiner(node_id, via)
        proc = self.nodes[node_id]
        with trio.move_on_after(JOIN_TIMEOUT_S):
            while proc.running:
                best = await self.newest_status()
                if best is not None and str(node_id) in best["nodes"]:
                    self.joining.discard(node_id)
                    return
                await trio.sleep(0.5)  # admission is seen in the map only
            raise ClusterError(f"node {node_id} exited before it was admitted")
        raise ClusterError(f"node {node_id} not admitted within {JOIN_TIMEOUT_S:g} s")

    def launch_joiner(self, node_id: int, via: int) -> None:
        """Start a node that joins through ``via`` (also one whose admission the runner learnt
        of only later, from the cluster map)."""
        self.hosts[node_id] = self.host(node_id)
        self.known.add(node_id)
        if self.firewall is not None:
            self.firewall.add_node(node_id, self.hosts[node_id])
        extra = dict(self.settings)
        extra.update(
            {"RAFTCHAT_CLUSTER_JOIN": self.hosts[via], "RAFTCHAT_CLUSTER_PASSWORD": self.password}
        )
        proc = self._process(node_id, extra)
        self.nodes[node_id] = proc
        self.removed.discard(node_id)
        proc.launch()
        threading.Thread(target=self._await_ready, args=(proc,), daemon=True).start()

    async def leave(self, node_id: int, via: int) -> None:
        code, body = await self.call(via, "POST", "/cluster/leave", {"node_id": node_id})
        if code != 200:
            raise ClusterError(f"leave of node {node_id} via {via}: {code} {body}")
