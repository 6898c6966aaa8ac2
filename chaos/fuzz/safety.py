"""What the fuzzer must never send, so that the checkers judge the server and not the fuzzer.

The fuzzer holds the API and admin tokens (as the app's backend and an operator would), so a
well-formed request could legitimately change what the workload relies on: give its users new
tokens, kick them, delete their messages, add its users to a fuzz channel (whose messages would
then reach their sessions as RECVs no workload send explains), or take a node out of the
cluster. Two rules keep that out:

* **protected ids**: no request that the server can parse names a workload user or channel,
  not even as one party of a person channel, an agent channel or a command twin. Generators
  build from fuzz ids and :func:`sanitize` rewrites any protected id a mutation produced;
  byte-level mutants that parse are checked with :func:`json_is_safe` and dropped if not safe.
* **destructive routes and RPCs**: these get only bodies the server cannot parse
  (:func:`unparseable_json`; for gRPC, bytes the request type does not decode).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from typing import Any

CMD_SUFFIX = "____cmd"
"""The command twin suffix (docs/messaging.md): ``g0____cmd`` reaches ``g0``'s subscribers."""

DESTRUCTIVE_ROUTES: frozenset[str] = frozenset(
    {
        "/cluster/join",
        "/cluster/leave",
        "/cluster/drain",
        "/channel/delete",
        "/channel/messages_delete",
        "/channel/retention",
        "/channel/subscriber_remove",
        "/channel/subscriber_remove_all",
        "/channel/blacklist_add",
        "/channel/blacklist_set",
        "/channel/blacklist_remove",
        "/channel/blacklist_remove_all",
        "/channel/whitelist_add",
        "/channel/whitelist_set",
        "/channel/whitelist_remove",
        "/channel/whitelist_remove_all",
        "/message/delete",
        "/message/revoke",
        "/message/edit",
        "/conversations/clearMessages",
        "/conversations/delete",
        "/user/device_quit",
        "/user/systemuids_add",
        "/user/systemuids_remove",
    }
)
"""POST routes that only ever get a body that is not a JSON object (a 400 before any effect):
membership changes, deletions, list and permission changes, kicks."""

DESTRUCTIVE_RPCS: frozenset[str] = frozenset(
    {
        "/raftchat.v1.Cluster/Join",
        "/raftchat.v1.Cluster/Leave",
        "/raftchat.v1.Channels/Delete",
        "/raftchat.v1.Channels/RemoveSubscribers",
        "/raftchat.v1.Channels/RemoveAllSubscribers",
        "/raftchat.v1.Channels/AddToDenyList",
        "/raftchat.v1.Channels/SetDenyList",
        "/raftchat.v1.Channels/RemoveFromDenyList",
        "/raftchat.v1.Channels/ClearDenyList",
        "/raftchat.v1.Channels/AddToAllowList",
        "/raftchat.v1.Channels/SetAllowList",
        "/raftchat.v1.Channels/RemoveFromAllowList",
        "/raftchat.v1.Channels/ClearAllowList",
        "/raftchat.v1.Users/DeviceQuit",
        "/raftchat.v1.Messages/Revoke",
        "/raftchat.v1.Messages/Edit",
        "/raftchat.v1.Messages/DeleteForUser",
        "/raftchat.v1.Conversations/Delete",
    }
)
"""Public gRPC methods that get only request bytes their request type fails to decode. The
``Peer`` service is called without its token or with a wrong one, so every call is refused."""


class Protected:
    """The workload's user and channel ids, and the test for a string that would reach them."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids = frozenset(ids)

    def hits(self, value: str) -> bool:
        if not self.ids or not value:
            return False
        core = value.removesuffix(CMD_SUFFIX)
        return any(part in self.ids for part in core.split("@"))

    def rewrite(self, value: str) -> str:
        """``value`` with every protected part renamed (``u1@u2`` -> ``fzu1@fzu2``)."""
        if not self.hits(value):
            return value
        suffix = CMD_SUFFIX if value.endswith(CMD_SUFFIX) else ""
        core = value.removesuffix(CMD_SUFFIX)
        parts = ["fz" + p if p in self.ids else p for p in core.split("@")]
        return "@".join(parts) + suffix


def sanitize(value: Any, protected: Protected) -> Any:
    """A JSON value with every protected id (in strings, lists, object keys) rewritten."""
    if isinstance(value, str):
        return protected.rewrite(value)
    if isinstance(value, list):
        return [sanitize(v, protected) for v in value]
    if isinstance(value, dict):
        return {protected.rewrite(k): sanitize(v, protected) for k, v in value.items()}
    return value


def _mentions(value: Any, protected: Protected, depth: int = 0) -> bool:
    if depth > 200:
        return False  # deeper than anything a real request holds: never an id the server reads
    if isinstance(value, str):
        return protected.hits(value)
    if isinstance(value, list):
        return any(_mentions(v, protected, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(
            protected.hits(k) or _mentions(v, protected, depth + 1) for k, v in value.items()
        )
    return False


def json_is_safe(body: bytes, protected: Protected) -> bool:
    """Whether a request body, parsed as the server parses it (``json.loads``), names no
    protected id. A body that does not parse is safe (the server refuses it)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return True
    return not _mentions(value, protected)


def text_is_safe(text: str, protected: Protected) -> bool:
    """A query string or other text: safe when no token between separators is protected."""
    if not protected.ids:
        return True
    for sep in "&=?/,;:\"' \t":
        text = text.replace(sep, "\x00")
    return not any(protected.hits(tok) for tok in text.split("\x00"))


def unparseable_json(rng: random.Random, seed_body: bytes) -> bytes:
    """A body that is not a JSON object for ``json.loads``: a truncated or damaged copy of
    ``seed_body``, or something that is JSON but not an object."""
    choice = rng.randrange(6)
    if choice == 0 and len(seed_body) > 1:
        out = seed_body[: rng.randrange(1, len(seed_body))]
    elif choice == 1:
        out = b"[" + seed_body + b"]"
    elif choice == 2:
        out = seed_body.replace(b":", b"=", 1)
    elif choice == 3:
        out = rng.choice((b"null", b"1e999", b'"x"', b"true", b"[]", b"-0"))
    elif choice == 4:
        out = b"{" * rng.choice((1, 50, 5000))
    else:
        out = b"\xff\xfe" + seed_body
    try:
        if isinstance(json.loads(out), dict):
            return b"{"  # a mutation that happened to still parse as an object
    except (ValueError, RecursionError):
        pass
    return out
