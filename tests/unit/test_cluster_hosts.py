"""Which addresses a node may join under (``cluster/hosts.py``)."""

from __future__ import annotations

import pytest

from cluster.hosts import host_problem, parse_ip, source_matches


@pytest.mark.parametrize(
    "host",
    ["10.0.0.4", "127.0.3.104", "::1", "[fd00::4]", "2001:db8::4", "node4", "node-4.example.com",
     "node4.example.com.", "a" * 63 + ".example"],
)  # fmt: skip
def test_addresses_a_node_may_have(host: str) -> None:
    assert host_problem(host) is None


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("", "IP address or a DNS name"),
        ("0.0.0.0", "wildcard"),
        ("::", "wildcard"),
        ("[::]", "wildcard"),
        ("::ffff:0.0.0.0", "wildcard"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("10.0.0", "neither"),
        ("300.1.1.1", "neither"),
        ("not a host", "neither"),
        ("-node4", "neither"),
        ("node4-", "neither"),
        ("node..4", "neither"),
        ("a" * 64 + ".example", "neither"),
        ("node4:11110", "neither"),
        ("x" * 254, "253 characters"),
        ("node4\n", "neither"),
    ],
)
def test_addresses_a_node_may_not_have(host: str, why: str) -> None:
    problem = host_problem(host)
    assert problem is not None and why in problem


@pytest.mark.parametrize(
    ("addresses", "source", "matches"),
    [
        (["10.0.0.4"], "10.0.0.4", True),
        (["10.0.0.4"], "10.0.0.5", False),
        (["10.0.0.4", "10.0.1.4"], "10.0.1.4", True),  # a name with several addresses
        (["10.0.0.4"], "::ffff:10.0.0.4", True),  # IPv4 on a dual-stack socket
        (["fd00::4"], "fd00::4", True),
        (["127.0.3.104"], "127.0.0.1", True),  # loopback connections leave from 127.0.0.1
        (["::1"], "127.0.0.1", True),
        (["10.0.0.4"], "127.0.0.1", False),  # a loopback caller naming another machine
        (["127.0.0.1"], "10.0.0.4", False),
        ([], "10.0.0.4", False),  # a name that does not resolve
        (["10.0.0.4"], "", False),
        (["10.0.0.4"], "unix:/tmp/sock", False),
    ],
)
def test_a_join_must_come_from_the_address_it_names(
    addresses: list[str], source: str, matches: bool
) -> None:
    ips = [ip for ip in (parse_ip(a) for a in addresses) if ip is not None]
    assert source_matches(ips, source) is matches
