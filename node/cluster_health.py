"""Each member's health for ``raftchat cluster status``, and the table that shows it.

A member is asked for its own ``/cluster/status`` with a short timeout, after a bare TCP
connect, which tells two failures apart: a node whose process is stopped (SIGSTOP) or whose
event loop is stuck still has its listening socket, so the kernel completes the connect while
nothing answers (**paused**); a node that is down or cut off refuses or drops the connect
(**unreachable**). A node that answers with an error is **error**; the others are **ok**.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from client.http import SyncHttpClient

PROBE_TIMEOUT_S = 2.0
"""A node's own status comes in milliseconds; one that has not answered in this long is not
serving clients either."""

OK, PAUSED, UNREACHABLE, ERROR = "ok", "paused", "unreachable", "error"


@dataclass(frozen=True, slots=True)
class NodeHealth:
    node_id: int
    url: str
    health: str
    detail: str = ""
    status: dict[str, Any] | None = None
    """The node's own ``/cluster/status``, when it answered."""

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "health": self.health, "detail": self.detail}


def member_url(answered_url: str, host: str) -> str:
    """A member's API: the scheme and port of the URL that answered, at the member's address
    (every node has the same ports, each on its own address)."""
    parts = urlsplit(answered_url)
    port = f":{parts.port}" if parts.port else ""
    address = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{address}{port}"


def probe(
    node_id: int,
    url: str,
    admin_token: str | None,
    timeout_s: float,
    http: httpx.Client | None = None,
) -> NodeHealth:
    """One member's health. ``http``: an httpx client to use (and leave open), whose timeout
    should be ``timeout_s``; a new client costs tens of milliseconds of CPU (its TLS context),
    which a caller that probes again and again (the web console) saves."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except TimeoutError:
        return NodeHealth(node_id, url, UNREACHABLE, f"no TCP connect within {timeout_s:g} s")
    except OSError as e:
        return NodeHealth(node_id, url, UNREACHABLE, e.strerror or str(e))
    client = SyncHttpClient(url, timeout_s=timeout_s, retries=0, admin_token=admin_token, http=http)
    try:
        resp = client.request("GET", "/cluster/status")
    except httpx.TimeoutException:
        return NodeHealth(
            node_id,
            url,
            PAUSED,
            f"accepts connections but no answer within {timeout_s:g} s (stopped or hung)",
        )
    except httpx.TransportError as e:
        return NodeHealth(node_id, url, UNREACHABLE, f"{type(e).__name__}: {e}")
    finally:
        if http is None:
            client.close()
    if resp.status_code != 200:
        return NodeHealth(node_id, url, ERROR, f"HTTP {resp.status_code}: {resp.text[:120]}")
    try:
        body = resp.json()
    except ValueError:
        return NodeHealth(node_id, url, ERROR, "answer is not JSON")
    if not isinstance(body, dict):
        return NodeHealth(node_id, url, ERROR, "answer is not a JSON object")
    return NodeHealth(node_id, url, OK, status=body)


def probe_all(
    members: dict[int, str],
    admin_token: str | None,
    timeout_s: float = PROBE_TIMEOUT_S,
    http: httpx.Client | None = None,
) -> dict[int, NodeHealth]:
    """Every member at once: a paused node costs the timeout once, not once per node."""
    if not members:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(members), 16)) as pool:
        futures = {
            n: pool.submit(probe, n, url, admin_token, timeout_s, http)
            for n, url in members.items()
        }
        return {n: f.result() for n, f in sorted(futures.items())}


def _own_group(health: NodeHealth | None, group: int) -> dict[str, Any] | None:
    """A node's own figures for a group it replicates."""
    if health is None or health.status is None:
        return None
    for g in health.status.get("groups") or []:
        if isinstance(g, dict) and g.get("group") == group and "commit_index" in g:
            return g
    return None


def _num(value: Any) -> str:
    return "?" if value is None else str(value)


def group_rows(status: dict[str, Any], health: dict[int, NodeHealth]) -> list[list[str]]:
    """One row per group: replicas, leader, and the leader's own term, commit index, applied
    index and commit latency; then each follower's lag, the leader's commit index less the
    entries that follower has applied (``?`` where a node did not answer)."""
    rows = []
    for g in status.get("groups") or []:
        gid = int(g["group"])
        leader = g.get("leader")
        replicas = [int(r) for r in g.get("replicas") or []]
        own = _own_group(health.get(leader), gid) if leader is not None else None
        commit = own.get("commit_index") if own else None
        lags = []
        for r in replicas:
            if r == leader:
                continue
            theirs = _own_group(health.get(r), gid)
            lag = "?"
            if theirs is not None and commit is not None:
                applied = theirs.get("raft_applied", theirs.get("commit_index", 0))
                lag = str(max(int(commit) - int(applied), 0))
            lags.append(f"{r}:{lag}")
        latency = own.get("commit_ms") if own else None
        rows.append(
            [
                "ctrl" if gid == 0 else str(gid),
                ",".join(map(str, replicas)),
                _num(leader),
                _num(own.get("term") if own else None),
                _num(commit),
                _num(own.get("applied_index") if own else None),
                f"{latency['p50']}/{latency['p99']}" if isinstance(latency, dict) else "-",
                " ".join(lags) or "-",
            ]
        )
    return rows


def table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return [
        (indent + "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))).rstrip()
        for line in [header, *rows]
    ]


def render(status: dict[str, Any], health: dict[int, NodeHealth]) -> list[str]:
    out = [
        f"cluster map version {status.get('placement_version')}, "
        f"seen from node {status.get('node_id')}"
    ]
    nodes = {int(n): str(h) for n, h in (status.get("nodes") or {}).items()}
    zones = {int(n): str(z) for n, z in (status.get("zones") or {}).items()}
    node_rows = []
    for n, host in sorted(nodes.items()):
        h = health.get(n)
        zone = [zones.get(n, "-")] if zones else []
        detail = h.detail if h and h.detail else ""
        node_rows.append([str(n), host, *zone, h.health if h else "?", detail])
    # A zone column only when some member has a zone: without zones the table is as it was.
    header = ["node", "address", *(["zone"] if zones else []), "health", "detail"]
    out += table(header, node_rows)
    out.append("")
    out += table(
        ["group", "replicas", "leader", "term", "commit", "applied", "commit ms p50/p99", "lag"],
        group_rows(status, health),
    )
    return out
