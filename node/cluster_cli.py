"""``raftchat cluster status | leave | drain``: membership and drain through any node's HTTP
API.

There is no ``join``: a node joins by itself, started with ``cluster.join`` and the cluster
password (nothing without the password may admit a node; ``docs/operations.md``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from client.defaults import ADMIN_TOKEN_ENV, DEFAULT_HTTP_URL, DEV_DATA_DIR

if TYPE_CHECKING:
    from client.http import SyncHttpClient

MEMBERSHIP_TIMEOUT_S = 60.0
"""A join or leave answers once the controller committed it, which may wait for an election."""


def _admin_token(args: argparse.Namespace) -> str | None:
    from client.credentials import admin_token

    return admin_token(args.admin_token, default_target=not args.api)


def _api(args: argparse.Namespace, token: str | None) -> SyncHttpClient:
    # Imported here: `raftchat node` builds this command's parser too, and a node process has
    # no use for an HTTP client.
    from client.http import SyncHttpClient

    return SyncHttpClient(
        args.api or [DEFAULT_HTTP_URL], timeout_s=MEMBERSHIP_TIMEOUT_S, admin_token=token
    )


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cluster",
        help="cluster membership: status (with each member's health and lag), leave, drain",
    )
    p.add_argument("action", choices=["status", "leave", "drain"])
    p.add_argument(
        "--api",
        action="append",
        help=f"HTTP API of any member, repeatable: tried in turn (default {DEFAULT_HTTP_URL})",
    )
    p.add_argument(
        "--admin-token",
        help=f"the nodes' auth.admin_token (default: ${ADMIN_TOKEN_ENV}; without --api, "
        f"also {DEV_DATA_DIR}/admin.token of `raftchat dev`)",
    )
    p.add_argument("--node", type=int, help="node id to leave or drain")
    p.add_argument("--json", action="store_true", help="print raw JSON")
    p.add_argument(
        "--force",
        action="store_true",
        help="leave even if fewer members than cluster.replicas would stay (logged as a "
        "warning by the cluster; every slot group then runs short of replicas)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from client.errors import ApiError, ClientError

    try:
        token = _admin_token(args)
        with _api(args, token) as api:
            return _run(api, args, token)
    except ApiError as e:
        raise SystemExit(f"raftchat cluster: {e.status} {e.message}") from None
    except ClientError as e:
        raise SystemExit(f"raftchat cluster: {e}") from None


def _run(api: SyncHttpClient, args: argparse.Namespace, token: str | None) -> int:
    if args.action == "status":
        from .cluster_health import member_url, probe_all, render

        st = api.cluster_status()
        members = {n: member_url(api.url, host) for n, host in st.nodes.items()}
        health = probe_all(members, token)
        if args.json:
            out = {**st.raw, "health": {str(n): h.to_json() for n, h in health.items()}}
            print(json.dumps(out, indent=2))
            return 0
        print("\n".join(render(st.raw, health)))
        return 0
    if args.node is None:
        print("raftchat cluster: --node is required", file=sys.stderr)
        return 2
    if args.action == "drain":
        api.cluster_drain(args.node)
        print(
            f"node {args.node} is draining: it takes no new clients, hands its leaderships and "
            "sessions to the other nodes, then stops (start it again to bring it back)"
        )
        return 0
    if args.force:
        print(
            f"raftchat cluster leave: forcing node {args.node} out even if fewer members than "
            "cluster.replicas stay",
            file=sys.stderr,
        )
    api.cluster_leave(args.node, force=args.force)
    print(f"node {args.node} is leaving: its replicas move to the other nodes")
    return 0
