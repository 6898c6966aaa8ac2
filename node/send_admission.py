"""One admission path for every send before it is handed to the router.

Every front end (a WKProto or JSON-RPC session, ``/message/send``, ``/message/sendbatch`` and
the gRPC API, which runs the HTTP handlers) reads its request into a ``Draft``, calls
``admit_send`` and translates a ``Refusal`` into its own answer: a SENDACK reason code, an
HTTP status with the message, a gRPC status (through the HTTP answer).

The checks are pure functions in two steps, because the user facts to load depend on the canonical
channel id that the first one computes, and an unchecked request must not cost a cluster read:

1. ``check_payload`` and ``check_fields`` (the request itself): payload size and payload
   conventions (``PayloadDecodeError``, 9), channel type (``NotSupportChannelType``, 23), channel
   id (``ChannelIdError``, 16), field limits (9). Their ``Refusal.malformed`` is true: HTTP
   answers 400.
2. ``admit`` (the user-level rules, from user facts; ``send_checks.decide``): ``SendBan`` (25),
   ``InBlacklist`` (4), ``NotInWhitelist`` (13), then the sender's person-channel rate
   (``RateLimit``, 22), then a system message type from a sender that is not a system account
   (``NotAllowSend``, 11).

How the front ends differ is said by their ``Door``, not by skipping code: the HTTP API is
trusted (apply skips channel membership and lists) and may send system message types in a
user's name; a send to an explicit ``subscribers`` list is not held to the user-level rules;
a batch takes one rate token for all its recipients (``take_token`` None, the caller takes it).
The channel-local rules are decided in apply (``node/groups/permissions.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode

from . import payload_conventions as conventions
from .channels import canonical_channel_id, channel_id_problem
from .config import Config
from .pipeline_rules import SYSTEM_UID, request_problem
from .router import ClusterUnavailable
from .send_checks import SendRules, decide, receiver_of
from .userfacts import Facts, UserFacts

_KNOWN_CHANNEL_TYPES = {int(t) for t in ChannelType}


@dataclass(frozen=True)
class Draft:
    """A send as a front end read it, before any check."""

    from_uid: str
    channel_id: str
    """As addressed: a person channel by the peer's uid or as ``a@b``."""
    channel_type: int
    payload: bytes
    client_msg_no: str = ""
    setting: int = 0
    flags: int = 0
    expire: int = 0
    topic: str = ""
    stream_no: str = ""
    origin_conn: int = 0
    subscribers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refusal:
    reason: ReasonCode
    message: str
    malformed: bool = False
    """The request itself is bad (HTTP 400); otherwise a rule refused it."""


@dataclass(frozen=True)
class Door:
    """What differs between front ends, by name."""

    name: str
    trusted: bool
    """``SendItem.trusted``: apply skips group membership and channel lists (the HTTP API)."""
    user_rules: bool = True
    """Held to the user-level rules (send ban, the receiver's person lists, the rate)."""
    system_types: bool = False
    """Any sender may send a system message type (> 1000): the API speaks as the server."""


GATEWAY = Door("gateway", trusted=False)
API = Door("http", trusted=True, system_types=True)
API_SUBSCRIBERS = Door("http", trusted=True, system_types=True, user_rules=False)
"""``/message/send`` to an explicit ``subscribers`` list: the backend addresses uids directly."""


@dataclass(frozen=True)
class Settings:
    max_payload_bytes: int = 12288
    payload_conventions: bool = False
    person_whitelist: bool = False

    @classmethod
    def of(cls, config: Config, rules: SendRules) -> Settings:
        return cls(
            max_payload_bytes=config.messages.max_payload_bytes,
            payload_conventions=config.messages.payload_conventions,
            person_whitelist=rules.person_whitelist,
        )


@dataclass(frozen=True)
class Checked:
    """A draft whose fields passed: the item to propose (canonical channel id) and its payload
    read as a typed JSON object (``None``: opaque, or conventions off)."""

    item: pb.SendItem
    typed: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True)
class Parties:
    """The user facts of a send: its sender's and, for a person channel, its receiver's."""

    sender: Facts
    receiver: Facts | None = None


def check_payload(
    payload: bytes, settings: Settings
) -> tuple[dict[str, Any] | None, Refusal | None]:
    """(the payload as a typed JSON object or ``None``, why it is refused or ``None``); pure.
    Apart from ``check_fields`` so that a batch checks its one payload once."""
    if len(payload) > settings.max_payload_bytes:
        refusal = f"payload is larger than {settings.max_payload_bytes} bytes"
        return None, Refusal(ReasonCode.PAYLOAD_DECODE_ERROR, refusal, malformed=True)
    if not settings.payload_conventions:
        return None, None
    typed, problem = conventions.read(payload)
    if problem is not None:
        return None, Refusal(ReasonCode.PAYLOAD_DECODE_ERROR, problem, malformed=True)
    return typed, None


def check_fields(
    draft: Draft, typed: dict[str, Any] | None, settings: Settings, door: Door
) -> Checked | Refusal:
    """The request's fields but its payload (``check_payload`` passed it as ``typed``); pure."""
    if draft.channel_type not in _KNOWN_CHANNEL_TYPES:
        message = f"channel_type must be one of 1-12, got {draft.channel_type}"
        return Refusal(ReasonCode.NOT_SUPPORT_CHANNEL_TYPE, message, malformed=True)
    problem = channel_id_problem(draft.channel_id, draft.channel_type)
    if problem is not None:
        return Refusal(ReasonCode.CHANNEL_ID_ERROR, problem, malformed=True)
    try:
        channel_id = canonical_channel_id(draft.from_uid, draft.channel_id, draft.channel_type)
    except ValueError as e:
        return Refusal(ReasonCode.CHANNEL_ID_ERROR, f"channel_id: {e}", malformed=True)
    problem = request_problem(
        draft.client_msg_no, draft.topic, draft.stream_no, channel_id, draft.from_uid, draft.expire
    )
    if problem is not None:
        return Refusal(ReasonCode.PAYLOAD_DECODE_ERROR, problem, malformed=True)
    item = pb.SendItem(
        from_uid=draft.from_uid,
        channel_id=channel_id,
        channel_type=draft.channel_type,
        client_msg_no=draft.client_msg_no,
        payload=draft.payload,
        setting=draft.setting,
        flags=draft.flags,
        expire=draft.expire,
        topic=draft.topic,
        stream_no=draft.stream_no,
        origin_conn=draft.origin_conn,
        trusted=door.trusted,
        subscribers=draft.subscribers,
    )
    return Checked(item, typed)


def admit(
    checked: Checked,
    parties: Parties | None,
    settings: Settings,
    door: Door,
    take_token: Callable[[str], bool] | None = None,
) -> pb.SendItem | Refusal:
    """The user-level rules; pure but for ``take_token``, which is asked for one token of the
    sender's bucket only when a person send passed the rules (``None``: the caller limits).
    ``parties`` is ``None`` when the user rules do not apply (``door.user_rules`` off, or a
    node without user facts in unit tests). Sets ``system`` on the returned item."""
    item = checked.item
    system = False
    if parties is not None:
        reason, system = decide(item, parties.sender, parties.receiver, settings.person_whitelist)
        if reason != ReasonCode.SUCCESS:
            return Refusal(reason, f"send refused: {reason.name}")
        if (
            not system
            and take_token is not None
            and item.channel_type == ChannelType.PERSON
            and not take_token(item.from_uid)
        ):
            return Refusal(ReasonCode.RATE_LIMIT, "the sender's person send rate is reached")
    if not door.system_types and not system and conventions.is_system_type(checked.typed):
        # A system notice (type > 1000) renders as the server speaking: only the API and
        # system accounts may send one.
        return Refusal(ReasonCode.NOT_ALLOW_SEND, "a system message type from a user")
    if system:
        item.system = True
    return item


async def load_parties(facts: UserFacts, item: pb.SendItem) -> Parties:
    """The sender's and a person receiver's facts, from their own slot groups concurrently.

    May raise ``router.ClusterUnavailable`` when a uid's slot group cannot be read."""
    if item.from_uid == SYSTEM_UID:
        # The API's own sender: a system account by definition, with nothing to load.
        return Parties(Facts(SYSTEM_UID, system=True))
    other = receiver_of(item)
    loaded: dict[str, Facts] = {}
    failures: list[ClusterUnavailable] = []

    async def load(uid: str) -> None:
        try:
            loaded[uid] = await facts.get(uid)
        except ClusterUnavailable as e:
            failures.append(e)  # raised below, not wrapped in the nursery's exception group

    if other is None or other == item.from_uid:
        await load(item.from_uid)
    else:
        # A cold cache costs one round trip, not two.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load, item.from_uid)
            nursery.start_soon(load, other)
    if failures:
        raise failures[0]
    return Parties(loaded[item.from_uid], loaded.get(other or ""))


async def admit_checked(
    checked: Checked,
    facts: UserFacts | None,
    settings: Settings,
    door: Door,
    take_token: Callable[[str], bool] | None,
) -> pb.SendItem | Refusal:
    """``admit`` after loading the facts it needs; raises ``ClusterUnavailable``."""
    parties = None
    if door.user_rules and facts is not None:
        parties = await load_parties(facts, checked.item)
    return admit(checked, parties, settings, door, take_token)


async def admit_send(
    draft: Draft,
    facts: UserFacts | None,
    settings: Settings,
    door: Door,
    take_token: Callable[[str], bool] | None,
) -> pb.SendItem | Refusal:
    """Every check of a send: the item to hand to the router, or why not.

    May raise ``router.ClusterUnavailable`` when a uid's slot group cannot be read."""
    typed, refusal = check_payload(draft.payload, settings)
    if refusal is not None:
        return refusal
    checked = check_fields(draft, typed, settings, door)
    if isinstance(checked, Refusal):
        return checked
    return await admit_checked(checked, facts, settings, door, take_token)
