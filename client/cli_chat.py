"""``raftchat chat`` and ``raftchat tail``: terminal clients for trying a cluster by hand.

``chat`` logs in as a user through a reconnecting session, sends every line typed (or piped)
to one person or group as a text message, and prints the messages it receives, with a line
editor on a terminal that keeps the half-typed line intact, connection status lines, and lines
queued through outages. ``tail`` prints a channel's messages from its log, then new ones as they
are stored, by polling ``/channel/messagesync`` (so it needs no login and works for any
channel). Both print one message per line::

    [seq] from_uid: text

(``(channel_id/type)`` first for a message of another channel than the one chatted in; the
system sender shows as ``system``, a revoked message as ``(revoked)``; the payload rendered by
``client.payloads.describe``). What they do: ``client.terminal``; ``docs/client.md``.
"""

from __future__ import annotations

import argparse
from typing import Any

from proto.wkproto import ChannelType

from .defaults import API_TOKEN_ENV, DEV_DATA_DIR
from .defaults import DEFAULT_HTTP_URL as DEFAULT_URL
from .defaults import DEFAULT_TCP_ADDR as DEFAULT_NODE


def add_parsers(sub: Any) -> None:
    chat = sub.add_parser(
        "chat",
        help="chat as a user: send typed lines, print received messages",
        description="Log in as --uid, send each line typed (or piped) to --to as a text "
        "message, print what arrives. Lines typed while disconnected are queued. Without "
        "--token, a fresh token is registered for --uid over --http first. Exit code: 0 at "
        "the end of input (Ctrl-D) or on SIGTERM, 130 on Ctrl-C, 1 on an error.",
    )
    chat.add_argument("--uid", required=True, help="the user to log in as")
    chat.add_argument("--to", required=True, help="peer uid, or group id with --group")
    chat.add_argument("--group", action="store_true", help="--to is a group channel (type 2)")
    chat.add_argument("--token", help="the user's token (default: register a new one)")
    chat.add_argument(
        "--node",
        action="append",
        help=f"WKProto host:port, repeatable: the session fails over (default {DEFAULT_NODE})",
    )
    chat.add_argument("--ws", action="store_true", help="--node addresses are WebSocket ports")
    _add_http(chat)
    chat.set_defaults(func=_run_chat)

    tail = sub.add_parser(
        "tail",
        help="print a channel's messages from its log, then new ones",
        description="Print a channel's stored messages from --from-seq, then poll for new "
        "ones (until interrupted, or only up to the head with --once).",
    )
    tail.add_argument("--channel", required=True, help="channel id (person: the peer's uid)")
    tail.add_argument("--type", type=int, default=int(ChannelType.GROUP), help="channel type")
    tail.add_argument("--from-seq", type=int, default=1, help="first seq to print (default 1)")
    tail.add_argument(
        "--login-uid",
        default="tail",
        help="whose view to read in: required for a person channel (default 'tail')",
    )
    tail.add_argument("--once", action="store_true", help="stop at the head")
    tail.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
    _add_http(tail)
    tail.set_defaults(func=_run_tail)


def _add_http(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--http",
        action="append",
        help=f"HTTP API base URL, repeatable: calls fail over (default {DEFAULT_URL})",
    )
    p.add_argument(
        "--api-token",
        help=f"the nodes' auth.api_token (default: ${API_TOKEN_ENV}; without --http, "
        f"also {DEV_DATA_DIR}/api.token of `raftchat dev`)",
    )


# The commands load trio, httpx and the session only when they run: `raftchat node` builds
# these parsers too, and a node process has no use for a client.


def _run_chat(args: argparse.Namespace) -> int:
    from .terminal import run_chat

    return run_chat(args)


def _run_tail(args: argparse.Namespace) -> int:
    from .terminal import run_tail

    return run_tail(args)
