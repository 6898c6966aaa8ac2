"""The node's process title: ``raftchat node <id> <host>`` in ``ps``, ``top`` and
``/proc/<pid>/cmdline``, so that an operator finds node 2 without matching ports to PIDs."""

from __future__ import annotations

from setproctitle import setproctitle


def node_title(node_id: int, host: str) -> str:
    return f"raftchat node {node_id} {host}"


def set_node_title(node_id: int, host: str) -> None:
    # setproctitle rewrites the argv area (what ps shows and /proc/<pid>/cmdline holds) and,
    # on Linux, the thread name in /proc/<pid>/comm (cut by the kernel to 15 bytes).
    setproctitle(node_title(node_id, host))
