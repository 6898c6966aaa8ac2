"""``raftchat cluster status | join | leave``: membership through any node's HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any


def _call(api: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api.rstrip("/") + path, data=data, method=method)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        raise SystemExit(f"raftchat cluster: {e.code} {detail}") from None
    except urllib.error.URLError as e:
        raise SystemExit(f"raftchat cluster: cannot reach {api}: {e.reason}") from None


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cluster", help="cluster membership: status, join, leave")
    p.add_argument("action", choices=["status", "join", "leave"])
    p.add_argument("--api", default="http://127.0.0.11:5001", help="HTTP API of any member")
    p.add_argument("--node", type=int, help="node id to join or leave")
    p.add_argument("--host", help="address of the joining node")
    p.add_argument("--json", action="store_true", help="print raw JSON")
    p.add_argument(
        "--force",
        action="store_true",
        help="leave even if fewer members than cluster.replicas would stay",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "status":
        st = _call(args.api, "GET", "/cluster/status")
        if args.json:
            print(json.dumps(st, indent=2))
            return 0
        print(f"cluster map version {st['placement_version']}, seen from node {st['node_id']}")
        for node_id, host in st["nodes"].items():
            print(f"  node {node_id}: {host}")
        print(f"  {'group':>5}  {'replicas':<16} leader")
        for g in st["groups"]:
            name = "ctrl" if g["group"] == 0 else str(g["group"])
            leader = g["leader"] if g["leader"] is not None else "?"
            print(f"  {name:>5}  {','.join(map(str, g['replicas'])):<16} {leader}")
        return 0
    if args.node is None:
        print("raftchat cluster: --node is required", file=sys.stderr)
        return 2
    if args.action == "join":
        if not args.host:
            print("raftchat cluster join: --host is required", file=sys.stderr)
            return 2
        _call(args.api, "POST", "/cluster/join", {"node_id": args.node, "host": args.host})
        print(f"node {args.node} admitted; start it with cluster.join set to a member's address")
        return 0
    body = {"node_id": args.node, **({"force": 1} if args.force else {})}
    _call(args.api, "POST", "/cluster/leave", body)
    print(f"node {args.node} is leaving: its replicas move to the other nodes")
    return 0
