"""The admission path of a send (``node/send_admission.py``): every refusal, in order, the
differences between front ends (``Door``), and the happy path; pure, but for ``load_parties``
on a stand-in user-facts cache."""

from __future__ import annotations

import json

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from node.channels import person_channel_id
from node.pipeline_rules import SYSTEM_UID
from node.router import ClusterUnavailable
from node.send_admission import (
    API,
    API_SUBSCRIBERS,
    GATEWAY,
    Checked,
    Door,
    Draft,
    Parties,
    Refusal,
    Settings,
    admit,
    admit_send,
    check_fields,
    check_payload,
    load_parties,
)
from node.userfacts import Facts
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode

R = ReasonCode
ON = Settings(max_payload_bytes=64, payload_conventions=True, person_whitelist=False)
TEXT = json.dumps({"type": 1, "content": "hi"}).encode()
NOTICE = json.dumps({"type": 1001, "content": "server says"}).encode()


def draft(**kw: object) -> Draft:
    fields: dict[str, object] = {
        "from_uid": "alice",
        "channel_id": "bob",
        "channel_type": ChannelType.PERSON,
        "payload": TEXT,
        "client_msg_no": "c1",
    }
    fields.update(kw)
    return Draft(**fields)  # type: ignore[arg-type]


def checked(d: Draft, door: Door = GATEWAY, s: Settings = ON) -> Checked:
    typed, refusal = check_payload(d.payload, s)
    assert refusal is None
    result = check_fields(d, typed, s, door)
    assert isinstance(result, Checked)
    return result


def refusal(result: object) -> tuple[ReasonCode, str, bool]:
    assert isinstance(result, Refusal), result
    return result.reason, result.message, result.malformed


# --- the request's own fields ------------------------------------------------------------


def test_payload_over_the_limit_is_9_with_the_http_message() -> None:
    _, r = check_payload(b"x" * 65, ON)
    assert refusal(r) == (R.PAYLOAD_DECODE_ERROR, "payload is larger than 64 bytes", True)
    assert check_payload(b"x" * 64, ON) == (None, None)


def test_payload_conventions_refuse_only_when_on() -> None:
    bad = json.dumps({"type": 1}).encode()  # text without content
    _, r = check_payload(bad, ON)
    reason, message, malformed = refusal(r)
    assert (reason, malformed) == (R.PAYLOAD_DECODE_ERROR, True)
    assert "needs content" in message
    off = Settings(max_payload_bytes=64, payload_conventions=False)
    assert check_payload(bad, off) == (None, None)
    assert check_payload(TEXT, ON) == ({"type": 1, "content": "hi"}, None)


@pytest.mark.parametrize("ctype", [0, 13, 255, -1, 2**40])
def test_unknown_channel_type_is_23(ctype: int) -> None:
    r = check_fields(draft(channel_type=ctype), None, ON, GATEWAY)
    assert refusal(r) == (
        R.NOT_SUPPORT_CHANNEL_TYPE,
        f"channel_type must be one of 1-12, got {ctype}",
        True,
    )


@pytest.mark.parametrize(
    ("ctype", "cid", "message"),
    [
        (ChannelType.GROUP, "", "channel_id is empty"),
        (ChannelType.GROUP, "a#b", "channel_id contains a reserved character: #"),
        (ChannelType.AGENT, "nobody", "channel_id of an agent channel must be uid@agentUid"),
        (
            ChannelType.PERSON,
            "carol@dave",
            "channel_id: sender is not a party of this person channel",
        ),
        (ChannelType.PERSON, "alice@", "channel_id: not a person channel id: 'alice@'"),
    ],
)
def test_bad_channel_id_is_16(ctype: int, cid: str, message: str) -> None:
    r = check_fields(draft(channel_type=ctype, channel_id=cid), None, ON, GATEWAY)
    assert refusal(r) == (R.CHANNEL_ID_ERROR, message, True)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("client_msg_no", "n" * 129, "client_msg_no is longer than 128 bytes"),
        ("topic", "t" * 256, "topic is longer than 255 bytes"),
        ("stream_no", "s" * 129, "stream_no is longer than 128 bytes"),
    ],
)
def test_fields_over_their_limits_are_9(field: str, value: str, message: str) -> None:
    r = check_fields(draft(**{field: value}), None, ON, GATEWAY)
    assert refusal(r) == (R.PAYLOAD_DECODE_ERROR, message, True)


def test_fields_pass_into_the_item_with_the_canonical_channel_and_the_door_trust() -> None:
    d = draft(setting=0x80, flags=3, expire=60, topic="t", stream_no="s", origin_conn=7)
    gw = check_fields(d, None, ON, GATEWAY)
    api = check_fields(d, None, ON, API)
    assert isinstance(gw, Checked) and isinstance(api, Checked)
    assert gw.item.channel_id == api.item.channel_id == person_channel_id("alice", "bob")
    assert (gw.item.trusted, api.item.trusted) == (False, True)
    assert (gw.item.setting, gw.item.flags, gw.item.expire) == (0x80, 3, 60)
    assert (gw.item.topic, gw.item.stream_no, gw.item.origin_conn) == ("t", "s", 7)
    sub = check_fields(
        draft(channel_type=ChannelType.TEMP, channel_id="tmpabc", subscribers=("a", "b")),
        None,
        ON,
        API_SUBSCRIBERS,
    )
    assert isinstance(sub, Checked) and list(sub.item.subscribers) == ["a", "b"]


# --- the user-level rules -----------------------------------------------------------------


def test_user_rules_refuse_in_v3_order() -> None:
    c = checked(draft())
    alice, bob = Facts("alice"), Facts("bob")
    banned = Facts("alice", send_ban=True)
    blocks = Facts("bob", deny=frozenset({"alice"}))
    assert refusal(admit(c, Parties(banned, blocks), ON, GATEWAY))[0] == R.SEND_BAN
    assert refusal(admit(c, Parties(alice, blocks), ON, GATEWAY))[0] == R.IN_BLACKLIST
    strict = Settings(max_payload_bytes=64, payload_conventions=True, person_whitelist=True)
    r = admit(checked(draft()), Parties(alice, bob), strict, GATEWAY)
    assert refusal(r) == (R.NOT_IN_WHITELIST, "send refused: NOT_IN_WHITELIST", False)
    ok = admit(checked(draft()), Parties(alice, bob), ON, GATEWAY)
    assert isinstance(ok, pb.SendItem) and not ok.system


def test_person_rate_takes_a_token_only_after_the_rules_passed() -> None:
    asked: list[str] = []

    def empty(uid: str) -> bool:
        asked.append(uid)
        return False

    blocks = Facts("bob", deny=frozenset({"alice"}))
    assert refusal(admit(checked(draft()), Parties(Facts("alice"), blocks), ON, GATEWAY, empty))[
        0
    ] == (R.IN_BLACKLIST)
    assert asked == []
    r = admit(checked(draft()), Parties(Facts("alice"), Facts("bob")), ON, GATEWAY, empty)
    assert refusal(r)[0] == R.RATE_LIMIT and asked == ["alice"]
    # Not for a group channel, not for a system sender, not when the caller limits (None).
    group = checked(draft(channel_type=ChannelType.GROUP, channel_id="g1"))
    assert isinstance(admit(group, Parties(Facts("alice")), ON, GATEWAY, empty), pb.SendItem)
    system = Parties(Facts("alice", system=True), Facts("bob"))
    assert isinstance(admit(checked(draft()), system, ON, GATEWAY, empty), pb.SendItem)
    alice_bob = Parties(Facts("alice"), Facts("bob"))
    assert isinstance(admit(checked(draft()), alice_bob, ON, GATEWAY, None), pb.SendItem)
    assert asked == ["alice"]


def test_system_types_are_refused_to_users_at_the_gateway_only() -> None:
    d = draft(channel_type=ChannelType.GROUP, channel_id="g1", payload=NOTICE)
    alice = Parties(Facts("alice"))
    r = admit(checked(d), alice, ON, GATEWAY)
    assert refusal(r) == (R.NOT_ALLOW_SEND, "a system message type from a user", False)
    assert refusal(admit(checked(d), None, ON, GATEWAY))[0] == R.NOT_ALLOW_SEND
    assert isinstance(admit(checked(d, API), alice, ON, API), pb.SendItem)
    item = admit(checked(d), Parties(Facts("alice", system=True)), ON, GATEWAY)
    assert isinstance(item, pb.SendItem) and item.system


def test_the_rate_is_refused_before_a_system_type() -> None:
    d = draft(payload=NOTICE)
    r = admit(checked(d), Parties(Facts("alice"), Facts("bob")), ON, GATEWAY, lambda _: False)
    assert refusal(r)[0] == R.RATE_LIMIT


def test_without_parties_no_user_rule_applies() -> None:
    item = admit(checked(draft(), API_SUBSCRIBERS), None, ON, API_SUBSCRIBERS, lambda _: False)
    assert isinstance(item, pb.SendItem) and not item.system


# --- loading the facts ------------------------------------------------------------------


class StandIn:
    """A user-facts cache that answers from a dict and records which uids were read."""

    def __init__(self, facts: dict[str, Facts], down: set[str] = set()) -> None:  # noqa: B006
        self.facts, self.down, self.read = facts, down, list[str]()

    async def get(self, uid: str) -> Facts:
        self.read.append(uid)
        if uid in self.down:
            raise ClusterUnavailable(R.NODE_NOT_MATCH, f"{uid}'s group has no leader")
        return self.facts.get(uid, Facts(uid))


def test_load_parties_reads_sender_and_person_receiver() -> None:
    cache = StandIn({"bob": Facts("bob", allow_stranger=True)})
    parties = trio.run(load_parties, cache, checked(draft()).item)  # type: ignore[arg-type]
    assert parties == Parties(Facts("alice"), Facts("bob", allow_stranger=True))
    assert sorted(cache.read) == ["alice", "bob"]
    cache.read.clear()
    note = checked(draft(channel_id="alice")).item  # to oneself: one read
    assert trio.run(load_parties, cache, note) == Parties(Facts("alice"), Facts("alice"))  # type: ignore[arg-type]
    assert cache.read == ["alice"]


def test_the_apis_own_sender_is_a_system_account_without_a_read() -> None:
    cache = StandIn({})
    item = checked(draft(from_uid=SYSTEM_UID, channel_type=2, channel_id="g")).item
    parties = trio.run(load_parties, cache, item)  # type: ignore[arg-type]
    assert parties.sender.system and cache.read == []


def test_an_unreadable_receiver_raises_cluster_unavailable() -> None:
    cache = StandIn({}, down={"bob"})
    with pytest.raises(ClusterUnavailable) as e:
        trio.run(load_parties, cache, checked(draft()).item)  # type: ignore[arg-type]
    assert e.value.reason == R.NODE_NOT_MATCH


def test_admit_send_skips_the_facts_when_the_door_has_no_user_rules() -> None:
    cache = StandIn({"alice": Facts("alice", send_ban=True)})
    d = draft(channel_type=ChannelType.TEMP, channel_id="tmpx")

    async def both() -> tuple[object, object]:
        api = await admit_send(d, cache, ON, API, None)  # type: ignore[arg-type]
        sub = await admit_send(d, cache, ON, API_SUBSCRIBERS, None)  # type: ignore[arg-type]
        return api, sub

    api, sub = trio.run(both)
    assert refusal(api)[0] == R.SEND_BAN
    assert isinstance(sub, pb.SendItem)
    assert cache.read == ["alice"]


# --- any input ----------------------------------------------------------------------------

_MALFORMED = {R.PAYLOAD_DECODE_ERROR, R.CHANNEL_ID_ERROR, R.NOT_SUPPORT_CHANNEL_TYPE}
_RULES = {R.SEND_BAN, R.IN_BLACKLIST, R.NOT_IN_WHITELIST, R.RATE_LIMIT, R.NOT_ALLOW_SEND}
_text = st.text(st.characters(codec="utf-8"), max_size=70)


@settings(max_examples=300, deadline=None)
@given(
    from_uid=st.sampled_from(["alice", "bob", SYSTEM_UID]),
    channel_id=st.one_of(_text, st.sampled_from(["bob", "alice@bob", "bob@carol", "g1"])),
    channel_type=st.integers(-1, 14),
    payload=st.one_of(st.binary(max_size=80), st.sampled_from([TEXT, NOTICE])),
    client_msg_no=_text,
    door=st.sampled_from([GATEWAY, API, API_SUBSCRIBERS]),
    tokens=st.booleans(),
)
def test_any_draft_is_admitted_or_refused_precisely(
    from_uid: str,
    channel_id: str,
    channel_type: int,
    payload: bytes,
    client_msg_no: str,
    door: Door,
    tokens: bool,
) -> None:
    cache = StandIn({"bob": Facts("bob", deny=frozenset({"alice"}))})
    d = draft(
        from_uid=from_uid,
        channel_id=channel_id,
        channel_type=channel_type,
        payload=payload,
        client_msg_no=client_msg_no,
    )

    async def run() -> pb.SendItem | Refusal:
        return await admit_send(d, cache, ON, door, lambda _: tokens)  # type: ignore[arg-type]

    result = trio.run(run)
    if isinstance(result, Refusal):
        assert result.message
        assert result.reason in (_MALFORMED if result.malformed else _RULES)
        assert not (result.malformed and cache.read)  # a malformed draft costs no read
        if not door.user_rules:
            assert result.malformed
    else:
        assert result.from_uid == from_uid and result.channel_type == channel_type
        assert result.trusted == door.trusted
        assert result.system == (from_uid == SYSTEM_UID and door.user_rules)
