"""Channel identity rules: uid validation, canonical person-channel ids, recipient views."""

from __future__ import annotations

import unicodedata

from proto.wkproto import ChannelType
from proto.wkproto.channels import person_channel_id as person_channel_id
from proto.wkproto.channels import person_parties as person_parties

MAX_ID_BYTES = 64
CMD_SUFFIX = "____cmd"
"""Suffix of command twin channels (``node/command_channels.py``)."""
_FORBIDDEN = set("@#&")


def id_problem(value: str, what: str = "uid") -> str | None:
    """Why ``value`` is not a valid uid or channel id, or ``None`` when it is.

    ``@`` separates the two uids of a person channel, and WuKongIM also reserves ``#`` and ``&``.
    """
    if not value:
        return f"{what} is empty"
    # "surrogatepass": a lone surrogate (a JSON "\ud800") has no UTF-8 form; it is measured
    # here and refused below as a control character instead of raising.
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return f"{what} is longer than {MAX_ID_BYTES} bytes"
    bad = _FORBIDDEN.intersection(value)
    if bad:
        return f"{what} contains a reserved character: {''.join(sorted(bad))}"
    # Unicode categories C* are control, format, surrogate, private-use and unassigned code
    # points: none belongs in an identifier that is logged, hashed and compared byte for byte.
    if any(c.isspace() or unicodedata.category(c).startswith("C") for c in value):
        return f"{what} contains whitespace or control characters"
    return None


def channel_id_problem(channel_id: str, channel_type: int) -> str | None:
    """Why ``channel_id`` cannot address a channel of ``channel_type`` as given, or ``None``.

    A person id with ``@`` is checked by ``canonical_channel_id`` (the sender must be a party);
    an agent channel's id is ``uid@agentUid``, two valid uids; every other id is one."""
    if channel_type == ChannelType.PERSON and "@" in channel_id:
        return None
    if channel_type == ChannelType.AGENT:
        uid, sep, agent = channel_id.partition("@")
        if not sep:
            return "channel_id of an agent channel must be uid@agentUid"
        return id_problem(uid, "agent channel uid") or id_problem(agent, "agent channel agent")
    return id_problem(channel_id, "channel_id")


def canonical_channel_id(sender_uid: str, channel_id: str, channel_type: int) -> str:
    """The id a channel is stored under. Clients address a person channel by the peer's uid;
    an already canonical ``a@b`` is accepted when the sender is one of the two."""
    if channel_type != ChannelType.PERSON:
        return channel_id
    if "@" in channel_id:
        a, b = person_parties(channel_id)
        for party in (a, b):
            problem = id_problem(party, "person channel party")
            if problem is not None:
                raise ValueError(problem)
        if sender_uid not in (a, b):
            raise ValueError("sender is not a party of this person channel")
        return person_channel_id(a, b)
    return person_channel_id(sender_uid, channel_id)


def view_channel_id(channel_id: str, channel_type: int, recipient_uid: str) -> str:
    """The channel id as a recipient sees it: for a person channel, the other party's uid."""
    if channel_type != ChannelType.PERSON:
        return channel_id
    suffix = CMD_SUFFIX if channel_id.endswith(CMD_SUFFIX) else ""  # a command twin: peer + suffix
    a, b = person_parties(channel_id.removesuffix(suffix) if suffix else channel_id)
    return (b if recipient_uid == a else a) + suffix


def recipients(channel_id: str, channel_type: int, subscribers: list[str]) -> list[str]:
    """Who a message in the channel is for (the sender's other devices included)."""
    if channel_type == ChannelType.PERSON:
        a, b = person_parties(channel_id)
        return [a] if a == b else [a, b]
    return subscribers
