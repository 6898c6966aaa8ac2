"""Send permissions decided in apply, from the channel's own state in its slot group.

WuKongIM v3's algorithm (reference §3.4), the channel-local half. The user-level half (the
sender's ``send_ban``, a person receiver's deny/allow lists, system accounts) lives in other
slot groups and is checked by the proposing node (``node/send_checks.py``), which marks system
senders in ``SendItem.system`` so that this stays a pure function of the command and the store.

Per channel type:

* person (1): nothing here (the proposing node checked the receiver's lists).
* group (2): missing row -> ChannelNotExist for trusted/system sends, SubscriberNotExist for
  client sends (what WuKongIM v2 answers for a never-created group); ``ban`` -> Ban unless the
  sender is a system account; ``disband`` -> Disband for everyone; then, for client sends of
  ordinary users only: deny list -> InBlacklist, not a subscriber -> SubscriberNotExist,
  non-empty allow list without the sender -> NotInWhitelist.
* visitors (10): ``disband`` -> Disband; the visitor (sender == channel id) passes; anyone else
  takes the member checks of a group against the visitors channel's own lists and subscribers.
* agent (11, id ``uid@agentUid``): ``disband`` -> Disband; a sender that is neither party ->
  NotAllowSend (also for trusted sends: it is a rule of the channel, not of membership).
* live (9): ``disband`` -> Disband, then the member checks of a group for client sends: a live
  room's messages go only to its current subscribers, so an outsider could only shout into a
  room they cannot hear (v3 checks only ``disband``; we choose the stricter rule).
* customer service (3), community (4), topic (5), info (6), data (7), temp (8), agent group
  (12): ``disband`` only, as v3 does ("terminal check"); v3 does not check subscribers for
  these.

Trusted (HTTP) and system senders skip the member checks, never ``disband``.
"""

from __future__ import annotations

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode

from ..pipeline_rules import SYSTEM_UID
from ..storage import Store
from .channel_state import ALLOW, DENY, in_list, list_nonempty

_KNOWN_TYPES = {int(t) for t in ChannelType}


def is_system_sender(item: pb.SendItem) -> bool:
    return item.system or item.from_uid == SYSTEM_UID


def agent_parties(channel_id: str) -> tuple[str, str]:
    uid, _, agent = channel_id.partition("@")
    return uid, agent


def send_permission(store: Store, item: pb.SendItem) -> ReasonCode:
    ctype, cid, sender = item.channel_type, item.channel_id, item.from_uid
    if ctype == ChannelType.PERSON:
        return ReasonCode.SUCCESS
    if ctype not in _KNOWN_TYPES:
        return ReasonCode.NOT_SUPPORT_CHANNEL_TYPE
    system = is_system_sender(item)
    privileged = system or item.trusted
    info = store.get_channel(ctype, cid)
    if ctype == ChannelType.GROUP:
        if info is None:
            return ReasonCode.CHANNEL_NOT_EXIST if privileged else ReasonCode.SUBSCRIBER_NOT_EXIST
        if info.ban and not system:
            return ReasonCode.BAN
    if info is not None and info.disband:
        return ReasonCode.DISBAND
    if ctype == ChannelType.AGENT:
        if not system and sender not in agent_parties(cid):
            return ReasonCode.NOT_ALLOW_SEND
        return ReasonCode.SUCCESS
    if ctype in (ChannelType.GROUP, ChannelType.LIVE) or (
        ctype == ChannelType.VISITORS and sender != cid
    ):
        return ReasonCode.SUCCESS if privileged else member_check(store, ctype, cid, sender)
    return ReasonCode.SUCCESS


def member_check(store: Store, ctype: int, cid: str, uid: str) -> ReasonCode:
    """WuKongIM's "common channel" sender checks, in its order."""
    if in_list(store, ctype, cid, DENY, uid):
        return ReasonCode.IN_BLACKLIST
    if not store.is_subscriber(ctype, cid, uid):
        return ReasonCode.SUBSCRIBER_NOT_EXIST
    if list_nonempty(store, ctype, cid, ALLOW) and not in_list(store, ctype, cid, ALLOW, uid):
        return ReasonCode.NOT_IN_WHITELIST
    return ReasonCode.SUCCESS
