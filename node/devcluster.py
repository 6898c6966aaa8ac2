"""The local-node launcher's old import path, for tools outside this repository written
against it (the side-by-side bench with NATS imports ``node.devcluster.ensure_ports_free``).
The launcher itself is ``launcher/devcluster.py``."""

from launcher.devcluster import ensure_ports_free

__all__ = ["ensure_ports_free"]
