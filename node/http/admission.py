"""Which connections the HTTP server serves: a cap in total and a cap per client address.

The per-address cap keeps one client (or one attacker) from taking every connection; the total
cap bounds file descriptors and memory whatever the number of addresses. An IPv6 client counts
per /64, the block one host usually has, so that rotating addresses buys no extra share.
"""

from __future__ import annotations

import ipaddress


def client_key(address: str) -> str:
    """The address a connection counts against: IPv4 as is, IPv6 by its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP address (say, a Unix socket): counted by its name
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Admission:
    """Counts the connections being served; ``admit`` either takes a slot or says why not."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self._per_client: dict[str, int] = {}

    def open_from(self, key: str) -> int:
        return self._per_client.get(key, 0)

    def admit(self, key: str) -> str | None:
        """Take a slot for a connection from ``key``: None if taken, else the refusal's
        reason, for the client to read."""
        held = self._per_client.get(key, 0)
        if held >= self.max_per_client:
            return (
                f"too many connections from {key}: {held} open, the most one address may have; "
                "reuse them (keep-alive) or retry later"
            )
        if self.total >= self.max_total:
            return f"the server is at its connection limit ({self.max_total}); retry later"
        self._per_client[key] = held + 1
        self.total += 1
        return None

    def release(self, key: str) -> None:
        """Give back the slot of a connection admitted for ``key``."""
        held = self._per_client[key] - 1
        if held:
            self._per_client[key] = held
        else:
            del self._per_client[key]
        self.total -= 1
