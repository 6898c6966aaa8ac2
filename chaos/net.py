"""Network partitions between node processes on one machine, with iptables.

Every node listens on its own loopback address, but its *outgoing* sockets leave from 127.0.0.1
(grpcio cannot bind a client's source address), so rules by source address would not tell
nodes apart. Instead each node process runs with its own primary group id (still uid 0, so it
reads and writes files as before) and a rule drops what a node's sockets send to another node's
address: ``-m owner --gid-owner <gid of a> -d <address of b> -j DROP``. Dropping a -> b kills
every connection between them in that direction, whoever opened it, since TCP needs both ways.
The workload runs with the runner's own group, so clients always reach every node, as clients
of a real cluster reach a minority node.

One catch: the answers on a connection that b opened to a go to b's *source* address,
127.0.0.1, which ``-d <address of b>`` does not match. So every new connection is marked with the
group id of the node that opened it (CONNMARK), and a second rule drops what a sends on a
connection b opened:
``-m owner --gid-owner <a> -s <address of a> -m connmark --mark <gid of b> -j DROP``. The
source address (a answers from the address b connected to) is there because group ids are the
same in every run: without it, a rule of one run would cut the nodes of another run on the
same machine.

Each run has its own pair of chains, ``RC-<pid>-<tag>`` for the drop rules and
``RC-<pid>-<tag>-M`` for the marking rules (``<pid>`` the runner's process id, ``<tag>`` six hex
digits of a hash of the run id; iptables allows 28 characters), both hooked into OUTPUT.
Healing flushes the run's drop chain; :meth:`Firewall.uninstall` removes the run's two chains and
nothing else, and :func:`remove_stale`, which every run calls first, removes the chains of runs
whose process is gone (a SIGKILLed run), so runs on different addresses can share a machine.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

CHAIN = "RAFTCHAT-CHAOS"
MARK_CHAIN = "RAFTCHAT-CHAOS-MARK"
"""The one pair of chains every run shared before chains carried the run; a machine may still
have them from a SIGKILLed run of that time, so :func:`remove_stale` removes them too."""
CHAIN_PREFIX = "RC-"
MAX_CHAIN_NAME = 28
"""iptables' limit on a chain name (XT_EXTENSION_MAXNAMELEN - 1)."""
_RUN_CHAIN = re.compile(r"^RC-(\d+)-[0-9a-z]+(?:-M)?$")
GID_BASE = 47000
"""Node n runs with group id GID_BASE + n: high enough to be no real group on this machine."""


class FirewallError(RuntimeError):
    pass


def node_gid(node_id: int) -> int:
    return GID_BASE + node_id


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock rather than fail when another iptables runs at the same time.
    proc = subprocess.run(["iptables", "-w", "10", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise FirewallError(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def chain_names(run_id: str, pid: int | None = None) -> tuple[str, str]:
    """The drop chain and the marking chain of run ``run_id`` made by process ``pid`` (default:
    this one). The pid tells :func:`remove_stale` whether the run is still alive."""
    pid = os.getpid() if pid is None else pid
    tag = hashlib.sha256(run_id.encode()).hexdigest()[:6]
    chain = f"{CHAIN_PREFIX}{pid}-{tag}"
    assert len(chain) + 2 <= MAX_CHAIN_NAME, chain
    return chain, f"{chain}-M"


def chain_pid(chain: str) -> int | None:
    """The pid a run's chain (or probe chain) carries; None for any other chain."""
    m = _RUN_CHAIN.match(chain)
    return int(m.group(1)) if m else None


def our_chains() -> list[str]:
    """Every chain of this module on the machine: runs' chains, probes, the legacy pair."""
    listing = _iptables("-S", check=False).stdout.splitlines()
    names = [line.split()[1] for line in listing if line.startswith("-N ")]
    return [n for n in names if chain_pid(n) is not None or n in (CHAIN, MARK_CHAIN)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove_chain(chain: str) -> None:
    """Unhook ``chain`` from OUTPUT, flush and delete it (idempotent)."""
    while _iptables("-D", "OUTPUT", "-j", chain, check=False).returncode == 0:
        pass
    _iptables("-F", chain, check=False)
    _iptables("-X", chain, check=False)


def problem() -> str | None:
    """Why partitions cannot be made on this machine, or None."""
    if shutil.which("iptables") is None:
        return "iptables is not installed (apt-get install -y iptables)"
    probe = _iptables("-S", "OUTPUT", check=False)
    if probe.returncode != 0:
        return f"iptables does not work here (root needed): {probe.stderr.strip()}"
    # The owner, conntrack and connmark matches must exist in this kernel. The probe chain
    # carries our pid, so that a probe of another run at the same moment is left alone.
    chain = f"{CHAIN_PREFIX}{os.getpid()}-probe"
    _iptables("-N", chain, check=False)
    rule = ["-m", "owner", "--gid-owner", str(GID_BASE), "-m", "connmark", "--mark", "1"]
    made = _iptables("-A", chain, *rule, "-j", "DROP", check=False)
    mark = _iptables(
        "-A", chain, "-m", "conntrack", "--ctstate", "NEW", "-j", "CONNMARK", "--set-mark", "1",
        check=False,
    )  # fmt: skip
    _iptables("-F", chain, check=False)
    _iptables("-X", chain, check=False)
    if made.returncode != 0 or mark.returncode != 0:
        return f"iptables lacks owner/connmark support: {(made.stderr or mark.stderr).strip()}"
    return None


def remove_stale() -> None:
    """Remove the chains (and their hooks) of runs whose process is gone, and the legacy shared
    pair; chains of live runs, this process's included, are left alone (idempotent)."""
    if shutil.which("iptables") is None:
        return
    for chain in our_chains():
        pid = chain_pid(chain)
        if pid is None or not _pid_alive(pid):
            _remove_chain(chain)


def ring_links(nodes: Sequence[int]) -> set[tuple[int, int]]:
    """The links that stay up in an overlapping-majorities partition, as undirected pairs
    (a, b) with a < b: every node still sees a majority, but no two see the same one. Nodes sit
    on a ring and keep their nearest neighbours on each side (with 5 nodes: node 1 sees
    {5, 1, 2}, node 2 sees {1, 2, 3}). Three nodes cannot form such a ring, so they get the
    closest thing, a bridge: the first and the last lose their link, the middle sees both."""
    n = len(nodes)
    every = {(min(a, b), max(a, b)) for a in nodes for b in nodes if a != b}
    if n <= 3:
        cut = {(min(nodes[0], nodes[-1]), max(nodes[0], nodes[-1]))} if n == 3 else set()
        return every - cut
    reach = max(1, (n // 2) // 2)  # neighbours kept on each side: 1 for 4-7 nodes, 2 for 8-11
    keep: set[tuple[int, int]] = set()
    for i, a in enumerate(nodes):
        for step in range(1, reach + 1):
            b = nodes[(i + step) % n]
            keep.add((min(a, b), max(a, b)))
    return keep & every


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """The nemesis changes the firewall from worker threads, several faults at once (a join
    adds a host while a partition iterates over them): one change at a time."""

    @functools.wraps(method)
    def run(self: Firewall, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(F, run)


class Firewall:
    """The partition state of one run. ``hosts`` maps node id -> its address; a joining node is
    added with :meth:`add_node`. ``run_id`` names the run's chains (:func:`chain_names`; a
    random one when not given): two firewalls with different run ids never touch each other's
    rules."""

    def __init__(self, hosts: Mapping[int, str], run_id: str | None = None) -> None:
        self.hosts: dict[int, str] = dict(hosts)
        self.blocked: set[tuple[int, int]] = set()
        self.installed = False
        self.run_id = run_id if run_id is not None else secrets.token_hex(8)
        self.chain, self.mark_chain = chain_names(self.run_id)
        self._lock = threading.RLock()

    @_locked
    def add_node(self, node_id: int, host: str) -> None:
        new = node_id not in self.hosts
        self.hosts[node_id] = host
        if self.installed and new:
            self._mark(node_id)

    def _mark(self, node_id: int) -> None:
        gid = str(node_gid(node_id))
        _iptables(
            "-A", self.mark_chain, "-m", "owner", "--gid-owner", gid, "-m", "conntrack",
            "--ctstate", "NEW", "-j", "CONNMARK", "--set-mark", gid,
        )  # fmt: skip

    @_locked
    def install(self) -> None:
        remove_stale()
        for chain in (self.chain, self.mark_chain):
            _remove_chain(chain)  # a second install of this firewall starts afresh
        _iptables("-N", self.mark_chain)
        _iptables("-N", self.chain)
        # First in OUTPUT, so that no ACCEPT rule of the machine's own comes before ours; the
        # marking chain first of all, so that a connection's first packet is marked before any
        # drop rule looks at it. (Another run's chains may sit before or after ours: its rules
        # only drop, and only packets of its own addresses.)
        _iptables("-I", "OUTPUT", "1", "-j", self.chain)
        _iptables("-I", "OUTPUT", "1", "-j", self.mark_chain)
        self.installed = True
        for n in self.hosts:
            self._mark(n)

    @_locked
    def uninstall(self) -> None:
        """Remove this run's chains, and nothing else."""
        self.blocked.clear()
        for chain in (self.chain, self.mark_chain):
            _remove_chain(chain)
        self.installed = False

    @_locked
    def heal(self) -> None:
        if self.installed:
            _iptables("-F", self.chain)
        self.blocked.clear()

    @_locked
    def block(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Drop what node a sends to node b, for each directed pair (a, b)."""
        for a, b in pairs:
            if a == b or (a, b) in self.blocked:
                continue
            gid = str(node_gid(a))
            # Connections a opened to b, then answers of a (from its own address) on
            # connections b opened.
            _iptables(
                "-A", self.chain, "-m", "owner", "--gid-owner", gid, "-d", self.hosts[b],
                "-j", "DROP",
            )  # fmt: skip
            _iptables(
                "-A", self.chain, "-m", "owner", "--gid-owner", gid, "-s", self.hosts[a],
                "-m", "connmark", "--mark", str(node_gid(b)), "-j", "DROP",
            )  # fmt: skip
            self.blocked.add((a, b))

    @_locked
    def split(self, components: Sequence[Collection[int]]) -> None:
        """Heal, then cut every link between nodes of different components. A node in no
        component is alone."""
        where = {n: i for i, comp in enumerate(components) for n in comp}
        loners = itertools.count(len(components))
        for n in self.hosts:
            if n not in where:
                where[n] = next(loners)
        self.heal()
        self.block((a, b) for a in self.hosts for b in self.hosts if where[a] != where[b])

    @_locked
    def isolate(self, node_id: int) -> None:
        self.split([[n for n in self.hosts if n != node_id]])

    @_locked
    def ring(self, nodes: Sequence[int] | None = None) -> None:
        """Overlapping majorities (see :func:`ring_links`)."""
        order = sorted(self.hosts) if nodes is None else list(nodes)
        keep = ring_links(order)
        self.heal()
        self.block(
            (a, b) for a in order for b in order if a != b and (min(a, b), max(a, b)) not in keep
        )
