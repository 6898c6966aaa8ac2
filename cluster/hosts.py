"""Which addresses a node may join a cluster under: pure checks, no IO.

A member's address is where every other node sends its Raft frames and signed peer calls, so a
join names one the cluster can trust: a well-formed host (an IP address or a DNS name), not a
wildcard, multicast or broadcast address (which would send cluster traffic nowhere or to
everyone), and the address the joining node's own call came from. That last check is how a
node proves the address is its own: its call's source is a TCP connection that completed
a handshake from there. Behind NAT (or when the node's outgoing connections leave from another
of its addresses) the source differs, and the join is refused rather than trusted: set
``node.host`` to the address the members see, or give the node a route that uses it.

One exception: on loopback every connection between two 127.0.0.0/8 addresses leaves from
127.0.0.1 whatever address it was opened to (Linux picks the route's source address, and
grpcio cannot bind a client's source), so a loopback source matches a loopback host. Only
processes on the same machine produce loopback sources.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    """An IP address literal (IPv6 with or without brackets); IPv4-mapped IPv6 as IPv4."""
    try:
        ip = ipaddress.ip_address(text.strip("[]") if text.startswith("[") else text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot be a member's address; None when it can."""
    if not host or len(host) > 253:
        return "the host must be an IP address or a DNS name of at most 253 characters"
    ip = parse_ip(host)
    if ip is not None:
        if ip.is_unspecified:
            return f"{host} is the wildcard address, not one a node can be reached at"
        if ip.is_multicast:
            return f"{host} is a multicast address"
        if ip == ipaddress.IPv4Address("255.255.255.255"):
            return f"{host} is the broadcast address"
        return None
    if host.replace(".", "").isdigit():
        return f"{host} is neither an IP address nor a DNS name"
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return f"{host!r} is neither an IP address nor a DNS name"
    return None


def source_matches(addresses: list[IPAddress], source: str) -> bool:
    """Whether a call from ``source`` (``bridge.peer_host``) came from one of ``addresses``
    (the joining node's host, resolved): the same address, or both on loopback."""
    src = parse_ip(source)
    if src is None:
        return False
    return any(a == src or (a.is_loopback and src.is_loopback) for a in addresses)
