"""The partition mechanism itself, with real iptables rules and real sockets: a rule cuts what a
process of one node's group sends to another node's address, and nothing else."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from chaos import net

HOSTS = {1: "127.0.251.11", 2: "127.0.251.12", 3: "127.0.251.13"}
OTHER_RUN = {1: "127.0.250.11", 2: "127.0.250.12", 3: "127.0.250.13"}
"""The nodes of a second run on the same machine: other addresses, the same group ids."""
PORT = 23999


@pytest.fixture
def firewall() -> Iterator[net.Firewall]:
    why = net.problem()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to partition: {why}")
        pytest.skip(why)
    fw = net.Firewall(HOSTS)
    try:
        fw.install()
        yield fw
    finally:
        fw.uninstall()


@pytest.fixture
def listeners() -> Iterator[None]:
    socks = []
    for host in HOSTS.values():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, PORT))
        s.listen(16)
        socks.append(s)
    try:
        yield
    finally:
        for s in socks:
            s.close()


def reaches(from_node: int | None, to_node: int) -> bool:
    """Whether a process running as node ``from_node`` (None: the runner) can connect."""
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(({HOSTS[to_node]!r}, {PORT}), timeout=1.0).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    gid = None if from_node is None else net.node_gid(from_node)
    return subprocess.run([sys.executable, "-c", code], group=gid).returncode == 0


def test_isolate_cuts_only_the_isolated_node(firewall: net.Firewall, listeners: None) -> None:
    firewall.isolate(1)
    assert not reaches(1, 2) and not reaches(2, 1) and not reaches(3, 1)
    assert reaches(2, 3) and reaches(3, 2)
    # Clients (the runner's own group) still reach the isolated node, as in a real partition
    # where a client sits next to the minority.
    assert reaches(None, 1)
    firewall.heal()
    assert reaches(1, 2) and reaches(2, 1)


def test_bridge_of_three_keeps_the_middle_connected(
    firewall: net.Firewall, listeners: None
) -> None:
    firewall.ring([1, 2, 3])  # three nodes: a bridge, 1 and 3 lose their link
    assert reaches(1, 2) and reaches(2, 3) and reaches(2, 1)
    assert not reaches(1, 3) and not reaches(3, 1)


def test_uninstall_leaves_no_rule(firewall: net.Firewall) -> None:
    firewall.split([[1, 2], [3]])
    assert firewall.blocked
    firewall.uninstall()
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    assert firewall.chain not in rules and firewall.mark_chain not in rules


def test_ring_of_five_gives_every_node_a_different_majority() -> None:
    nodes = [1, 2, 3, 4, 5]
    links = net.ring_links(nodes)
    views = {
        n: frozenset({n} | {b for a, b in links if a == n} | {a for a, b in links if b == n})
        for n in nodes
    }
    assert all(len(v) >= 3 for v in views.values())  # a majority of 5
    assert len(set(views.values())) == 5  # all different


def test_connections_open_before_the_partition_are_cut_both_ways(
    firewall: net.Firewall,
) -> None:
    """Answers on a connection node 1 opened to node 2 go to 127.0.0.1, not node 1's address;
    the connection mark must cut them too. Socket credentials are taken when a socket is made,
    so switching this process's group id makes each socket belong to a node."""
    try:
        os.setegid(net.node_gid(2))
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((HOSTS[2], PORT + 1))
        srv.listen(1)
        os.setegid(net.node_gid(1))
        cli = socket.create_connection((HOSTS[2], PORT + 1), timeout=2.0)
        os.setegid(net.node_gid(2))
        conn, _ = srv.accept()
    finally:
        os.setegid(0)
    with srv, cli, conn:
        conn.sendall(b"a")
        assert cli.recv(1) == b"a"
        firewall.isolate(1)
        conn.sendall(b"b")  # node 2 answering on node 1's connection
        cli.settimeout(1.5)
        with pytest.raises(TimeoutError):
            cli.recv(1)
        cli.sendall(b"c")
        conn.settimeout(1.5)
        with pytest.raises(TimeoutError):
            conn.recv(1)


def chain_rules(chain: str) -> list[str]:
    out = subprocess.run(["iptables", "-w", "-S", chain], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.startswith("-A ")]


def output_jumps() -> list[str]:
    out = subprocess.run(["iptables", "-w", "-S", "OUTPUT"], capture_output=True, text=True)
    return [line.split()[-1] for line in out.stdout.splitlines() if " -j " in line]


def test_chain_names_carry_the_run_and_fit_iptables() -> None:
    chain, mark = net.chain_names("20261122-101010-quick-seed42", pid=4_194_304)
    assert chain.startswith("RC-4194304-") and mark == chain + "-M"
    assert len(mark) <= net.MAX_CHAIN_NAME
    assert net.chain_names("another run", pid=4_194_304)[0] != chain
    assert net.chain_pid(chain) == net.chain_pid(mark) == 4_194_304
    assert net.chain_pid("OUTPUT") is None and net.chain_pid("RC-x-1") is None


def test_two_runs_never_touch_each_others_rules(firewall: net.Firewall) -> None:
    other = net.Firewall(OTHER_RUN, run_id="another run")
    assert {other.chain, other.mark_chain}.isdisjoint({firewall.chain, firewall.mark_chain})
    firewall.isolate(1)
    mine = chain_rules(firewall.chain)
    assert len(mine) == 8  # 4 directed pairs cut, 2 rules each
    try:
        other.install()  # a second run starting up
        other.isolate(2)
        other.heal()
        assert chain_rules(firewall.chain) == mine
        other.uninstall()
        assert chain_rules(firewall.chain) == mine
        assert len(chain_rules(firewall.mark_chain)) == len(HOSTS)
        assert {firewall.chain, firewall.mark_chain} <= set(output_jumps())
        assert {other.chain, other.mark_chain}.isdisjoint(net.our_chains())
        net.remove_stale()  # both runs are alive (this process): nothing of theirs goes
        assert chain_rules(firewall.chain) == mine
    finally:
        other.uninstall()


def test_stale_chains_of_a_dead_run_are_removed(firewall: net.Firewall) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True)  # fmt: skip
    dead_pid = int(gone.stdout)
    chains = net.chain_names("a SIGKILLed run", pid=dead_pid)
    try:
        for chain in chains:
            subprocess.run(["iptables", "-w", "-N", chain], check=True)
            subprocess.run(["iptables", "-w", "-A", "OUTPUT", "-j", chain], check=True)
        net.remove_stale()
        assert set(chains).isdisjoint(net.our_chains())
        assert set(chains).isdisjoint(output_jumps())
        assert {firewall.chain, firewall.mark_chain} <= set(net.our_chains())  # alive: kept
    finally:
        for chain in chains:
            net._remove_chain(chain)


def test_a_partition_in_one_run_leaves_the_links_of_another_run_alone(
    firewall: net.Firewall,
) -> None:
    """Both runs' nodes 1 and 2 have the same group ids. A connection node 1 of the other run
    opened to its node 2 carries the same connection mark as one of ours, so only the address
    in our rules keeps our partition off it."""
    try:
        os.setegid(net.node_gid(2))
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((OTHER_RUN[2], PORT + 2))
        srv.listen(1)
        os.setegid(net.node_gid(1))
        cli = socket.create_connection((OTHER_RUN[2], PORT + 2), timeout=2.0)
        os.setegid(net.node_gid(2))
        conn, _ = srv.accept()
    finally:
        os.setegid(0)
    with srv, cli, conn:
        firewall.isolate(1)  # our node 1 (and, in the other direction, our node 2)
        conn.sendall(b"a")  # the other run's node 2 answering its node 1
        cli.settimeout(1.5)
        assert cli.recv(1) == b"a"
        cli.sendall(b"b")
        conn.settimeout(1.5)
        assert conn.recv(1) == b"b"
