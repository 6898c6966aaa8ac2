"""Channel lists (deny/allow), user facts and channel deletion, as replicated state.

Key layouts (all in the slot group that owns the channel, or the uid for user facts):

* CF ``lists``: ``channel_key(type, id) + kind + uid`` -> ``b""``, kind ``D`` (deny list,
  WuKongIM's "blacklist") or ``A`` (allow list, "whitelist"). A person channel's lists belong
  to its owner: the lists of ``(bob, 1)`` are bob's, and live in bob's slot group.
* CF ``users``: ``SYSTEM_PREFIX + uid`` -> ``b""`` for a system account. Device keys in the same
  CF start with the uid itself, and a uid never holds a control character, so the ``\\x01``
  prefix cannot collide with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode

from ..storage import Store, keys
from . import conversations
from .context import ApplyContext

DENY = b"D"
ALLOW = b"A"
_KIND_BYTE = {pb.ListUpdate.DENY: DENY, pb.ListUpdate.ALLOW: ALLOW}
SYSTEM_PREFIX = b"\x01S"
_OK = pb.MetaResult(reason=ReasonCode.SUCCESS)


def list_prefix(channel_type: int, channel_id: str, kind: bytes) -> bytes:
    return keys.channel_key(channel_type, channel_id) + kind


def list_members(store: Store, channel_type: int, channel_id: str, kind: bytes) -> list[str]:
    prefix = list_prefix(channel_type, channel_id, kind)
    return [k[len(prefix) :].decode() for k, _ in store.prefix_items("lists", prefix)]


def in_list(store: Store, channel_type: int, channel_id: str, kind: bytes, uid: str) -> bool:
    key = list_prefix(channel_type, channel_id, kind) + uid.encode()
    return store.get_raw("lists", key) is not None


def list_nonempty(store: Store, channel_type: int, channel_id: str, kind: bytes) -> bool:
    prefix = list_prefix(channel_type, channel_id, kind)
    return bool(store.prefix_items("lists", prefix, limit=1))


def is_system(store: Store, uid: str) -> bool:
    return store.get_raw("users", SYSTEM_PREFIX + uid.encode()) is not None


# --- apply ------------------------------------------------------------------------------------


def _apply_lists(ctx: ApplyContext, op: pb.ListUpdate) -> pb.MetaResult:
    kind = _KIND_BYTE.get(op.kind)
    if kind is None:
        return pb.MetaResult(reason=ReasonCode.SYSTEM_ERROR, detail=f"unknown list kind {op.kind}")
    prefix = list_prefix(op.channel_type, op.channel_id, kind)
    # Order inside the batch matters: deletes before puts, so "reset + add x" keeps x.
    if op.reset:
        for key, _ in ctx.store.prefix_items("lists", prefix):
            ctx.wb.delete_raw("lists", key)
    for uid in op.remove:
        ctx.wb.delete_raw("lists", prefix + uid.encode())
    for uid in op.add:
        ctx.wb.put_raw("lists", prefix + uid.encode(), b"")
    return _OK


def _apply_user(ctx: ApplyContext, op: pb.UserUpdate) -> pb.MetaResult:
    if op.HasField("system"):
        key = SYSTEM_PREFIX + op.uid.encode()
        if op.system:
            ctx.wb.put_raw("users", key, b"")
        else:
            ctx.wb.delete_raw("users", key)
    return _OK


def _apply_channel_delete(ctx: ApplyContext, op: pb.ChannelDelete) -> pb.MetaResult:
    """Forget the channel's metadata: its row, subscribers and both lists. Messages and the head
    seq stay, so stored history remains readable and a re-created channel never reuses a seq."""
    ck = keys.channel_key(op.channel_type, op.channel_id)
    # Members' conversations stay (history is still readable) but end at today's head, as
    # for a removed member: a channel re-created under the same id starts afresh for them.
    members = ctx.store.subscribers(op.channel_type, op.channel_id)
    conversations.on_subscribers(ctx, op.channel_type, op.channel_id, [], members)
    ctx.wb.delete_channel(op.channel_type, op.channel_id)
    for key, _ in ctx.store.prefix_items("subscribers", ck):
        ctx.wb.delete_raw("subscribers", key)
    for key, _ in ctx.store.prefix_items("lists", ck):
        ctx.wb.delete_raw("lists", key)
    return _OK


META: dict[str, Callable[[ApplyContext, Any], pb.MetaResult]] = {
    "lists": _apply_lists,
    "user": _apply_user,
    "channel_delete": _apply_channel_delete,
}


# --- queries ----------------------------------------------------------------------------------


def _q_list(store: Store, q: dict[str, Any]) -> list[str]:
    kind = {"deny": DENY, "allow": ALLOW}[q["kind"]]
    return list_members(store, int(q["channel_type"]), q["channel_id"], kind)


def _q_system_uids(store: Store, q: dict[str, Any]) -> list[str]:
    return [k[len(SYSTEM_PREFIX) :].decode() for k, _ in store.prefix_items("users", SYSTEM_PREFIX)]


def user_facts(store: Store, uid: str) -> dict[str, Any]:
    """What a send needs to know about a uid, from its own slot group: its person channel's
    flags, its person lists and whether it is a system account."""
    own = store.get_channel(ChannelType.PERSON, uid)
    return {
        "uid": uid,
        "ban": bool(own and own.ban),
        "send_ban": bool(own and own.send_ban),
        "allow_stranger": bool(own and own.allow_stranger),
        "deny": list_members(store, ChannelType.PERSON, uid, DENY),
        "allow": list_members(store, ChannelType.PERSON, uid, ALLOW),
        "system": is_system(store, uid),
    }


QUERIES: dict[str, Callable[[Store, dict[str, Any]], Any]] = {
    "list": _q_list,
    "system_uids": _q_system_uids,
    "user_facts": lambda store, q: user_facts(store, q["uid"]),
}
