"""The user-level send rules, checked on the node that builds a ``SendItem`` (gateway SEND,
HTTP send) by ``send_admission.py``, which loads the facts and calls ``decide``.

The user-level send rules of WuKongIM v3 (reference §3.4) depend on facts kept in the slot
groups of the sender and, for a person channel, of the receiver, not in the channel's slot
group where apply runs. So the proposing node checks them with its user-facts cache
(``node/userfacts.py``) before proposing, and a refused send is answered without a proposal.
The channel-local rules are decided in apply (``node/groups/permissions.py``).

Order (v3): a system account passes straight to apply (which still refuses a disbanded
channel) and is marked ``SendItem.system``; the sender's ``send_ban`` -> SendBan (25); person
channel: receiver is a system account -> pass; sender in the receiver's deny list ->
InBlacklist (4); with ``messages.person_whitelist``: on the receiver's allow list or receiver
``allow_stranger`` -> pass, else NotInWhitelist (13). A note to self (``a@a``) always passes
the receiver rules.

HTTP sends (trusted) get the same checks: these are rules between users, so the backend
sending in a user's name is held to them; trusted only skips group membership in apply.

Last, a send to a person channel that passed takes a token from its sender's bucket
(``messages.person_rate_limit``, ``SendRules.senders``): RateLimit (22) when empty. The buckets
live on the node where the send enters the cluster, so a flood is refused before it costs a
hop; a user with devices on k nodes gets at most k times the rate. System senders are not
limited; a batch send takes one token for all its recipients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode

from .channels import person_parties
from .rate_limit import TokenBuckets
from .userfacts import Facts


@dataclass
class SendRules:
    """The node's settings for the pre-check, and its per-sender buckets."""

    person_whitelist: bool = False
    senders: TokenBuckets = field(default_factory=lambda: TokenBuckets(0))
    """Person-channel sends per sender uid."""


def decide(
    item: pb.SendItem, sender: Facts, receiver: Facts | None, person_whitelist: bool
) -> tuple[ReasonCode, bool]:
    """(reason, sender is a system account) from the facts; pure, for unit tests."""
    if sender.system:
        return ReasonCode.SUCCESS, True
    if sender.send_ban:
        return ReasonCode.SEND_BAN, False
    if item.channel_type != ChannelType.PERSON or receiver is None:
        return ReasonCode.SUCCESS, False
    if receiver.system or receiver.uid == sender.uid:
        return ReasonCode.SUCCESS, False
    if sender.uid in receiver.deny:
        return ReasonCode.IN_BLACKLIST, False
    if person_whitelist and not (sender.uid in receiver.allow or receiver.allow_stranger):
        return ReasonCode.NOT_IN_WHITELIST, False
    return ReasonCode.SUCCESS, False


def receiver_of(item: pb.SendItem) -> str | None:
    if item.channel_type != ChannelType.PERSON:
        return None
    a, b = person_parties(item.channel_id)
    return b if a == item.from_uid else a
