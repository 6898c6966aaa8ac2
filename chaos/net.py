"""Network partitions between node processes on one machine, with iptables.

Every node listens on its own loopback address, but its *outgoing* sockets leave from 127.0.0.1
(grpcio cannot bind a client's source address), so rules by source address would not tell
nodes apart. Instead each node process runs with its own primary group id (still uid 0, so it
reads and writes files as before) and a rule drops what a node's sockets send to another node's
address: ``-m owner --gid-owner <gid of a> -d <address of b> -j DROP``. Dropping a -> b kills
every connection between them in that direction, whoever opened it, since TCP needs both ways.
The workload runs with the runner's own group, so clients always reach every node, as clients
of a real cluster reach a minority node.

All rules live in one chain, ``RAFTCHAT-CHAOS``, hooked into OUTPUT. Healing flushes the chain;
:meth:`Firewall.uninstall` removes it, and :func:`remove_stale` removes what an interrupted
(SIGKILLed) run left behind, which every run calls first.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Collection, Iterable, Mapping, Sequence

CHAIN = "RAFTCHAT-CHAOS"
GID_BASE = 47000
"""Node n runs with group id GID_BASE + n: high enough to be no real group on this machine."""


class FirewallError(RuntimeError):
    pass


def node_gid(node_id: int) -> int:
    return GID_BASE + node_id


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock rather than fail when another iptables runs at the same time.
    proc = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise FirewallError(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def problem() -> str | None:
    """Why partitions cannot be made on this machine, or None."""
    if shutil.which("iptables") is None:
        return "iptables is not installed (apt-get install -y iptables)"
    probe = _iptables("-S", "OUTPUT", check=False)
    if probe.returncode != 0:
        return f"iptables does not work here (root needed): {probe.stderr.strip()}"
    return None


def remove_stale() -> None:
    """Remove the chain and its hook if a previous run left them (idempotent)."""
    if shutil.which("iptables") is None:
        return
    while _iptables("-D", "OUTPUT", "-j", CHAIN, check=False).returncode == 0:
        pass
    _iptables("-F", CHAIN, check=False)
    _iptables("-X", CHAIN, check=False)


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


class Firewall:
    """The partition state of one run. ``hosts`` maps node id -> its address; a joining node is
    added with :meth:`add_node`."""

    def __init__(self, hosts: Mapping[int, str]) -> None:
        self.hosts: dict[int, str] = dict(hosts)
        self.blocked: set[tuple[int, int]] = set()
        self.installed = False

    def add_node(self, node_id: int, host: str) -> None:
        self.hosts[node_id] = host

    def install(self) -> None:
        remove_stale()
        _iptables("-N", CHAIN)
        # First in OUTPUT, so that no ACCEPT rule of the machine's own comes before ours.
        _iptables("-I", "OUTPUT", "1", "-j", CHAIN)
        self.installed = True

    def uninstall(self) -> None:
        self.blocked.clear()
        remove_stale()
        self.installed = False

    def heal(self) -> None:
        if self.installed:
            _iptables("-F", CHAIN)
        self.blocked.clear()

    def block(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Drop what node a sends to node b, for each directed pair (a, b)."""
        for a, b in pairs:
            if a == b or (a, b) in self.blocked:
                continue
            gid = str(node_gid(a))
            _iptables(
                "-A", CHAIN, "-m", "owner", "--gid-owner", gid, "-d", self.hosts[b], "-j", "DROP"
            )
            self.blocked.add((a, b))

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

    def isolate(self, node_id: int) -> None:
        self.split([[n for n in self.hosts if n != node_id]])

    def ring(self, nodes: Sequence[int] | None = None) -> None:
        """Overlapping majorities (see :func:`ring_links`)."""
        order = sorted(self.hosts) if nodes is None else list(nodes)
        keep = ring_links(order)
        self.heal()
        self.block(
            (a, b) for a in order for b in order if a != b and (min(a, b), max(a, b)) not in keep
        )
