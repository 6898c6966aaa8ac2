"""Send permissions: the apply half (``groups/permissions.py``) on a real RocksDB store whose
state is written by applying metadata commands, and the proposing node's half
(``send_checks.decide``) on user facts. Every channel type 1-12 is covered."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.groups.machine import GroupMachine
from node.groups.permissions import send_permission
from node.pipeline_rules import SYSTEM_UID
from node.send_checks import decide, receiver_of
from node.storage import Store
from node.userfacts import Facts
from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode

R = ReasonCode
T = ChannelType


class State:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.machine = GroupMachine(1, store)
        self.index = itertools.count(1)

    def meta(self, op: pb.MetaOp) -> None:
        raw = self.machine.apply(
            next(self.index), pb.Command(time_ms=1, meta=op).SerializeToString()
        )
        assert pb.MetaResult.FromString(raw).reason == R.SUCCESS

    def channel(self, cid: str, ctype: int, subs: list[str] = [], **flags: Any) -> None:  # noqa: B006
        self.meta(
            pb.MetaOp(
                channel=pb.ChannelUpdate(
                    channel_id=cid, channel_type=ctype, add_subscribers=subs, **flags
                )
            )
        )

    def lists(self, cid: str, ctype: int, kind: int, uids: list[str]) -> None:
        op = pb.ListUpdate(channel_id=cid, channel_type=ctype, kind=kind, add=uids)
        self.meta(pb.MetaOp(lists=op))


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    store = Store(tmp_path / "db")
    yield State(store)
    store.close()


def check(state: State, cid: str, ctype: int, sender: str, **kw: Any) -> ReasonCode:
    item = pb.SendItem(from_uid=sender, channel_id=cid, channel_type=ctype, **kw)
    return ReasonCode(send_permission(state.store, item))


def test_person_is_not_checked_in_apply(state: State) -> None:
    assert check(state, "b@a", T.PERSON, "a") == R.SUCCESS


def test_group(state: State) -> None:
    state.channel("g", T.GROUP, ["m", "denied", "listed"])
    state.lists("g", T.GROUP, pb.ListUpdate.DENY, ["denied"])
    assert check(state, "g", T.GROUP, "m") == R.SUCCESS
    assert check(state, "g", T.GROUP, "stranger") == R.SUBSCRIBER_NOT_EXIST
    assert check(state, "g", T.GROUP, "denied") == R.IN_BLACKLIST
    # trusted and system senders skip the member and list checks
    assert check(state, "g", T.GROUP, "denied", trusted=True) == R.SUCCESS
    assert check(state, "g", T.GROUP, "stranger", system=True) == R.SUCCESS
    # a non-empty allow list admits only its members
    state.lists("g", T.GROUP, pb.ListUpdate.ALLOW, ["listed"])
    assert check(state, "g", T.GROUP, "listed") == R.SUCCESS
    assert check(state, "g", T.GROUP, "m") == R.NOT_IN_WHITELIST
    # deny wins over allow, and subscriber comes before allow
    state.lists("g", T.GROUP, pb.ListUpdate.ALLOW, ["denied"])
    assert check(state, "g", T.GROUP, "denied") == R.IN_BLACKLIST


def test_group_missing_ban_disband(state: State) -> None:
    assert check(state, "none", T.GROUP, "u") == R.SUBSCRIBER_NOT_EXIST
    assert check(state, "none", T.GROUP, "u", trusted=True) == R.CHANNEL_NOT_EXIST
    assert check(state, "none", T.GROUP, "u", system=True) == R.CHANNEL_NOT_EXIST
    state.channel("banned", T.GROUP, ["u"], ban=True)
    assert check(state, "banned", T.GROUP, "u") == R.BAN
    assert check(state, "banned", T.GROUP, "u", trusted=True) == R.BAN
    assert check(state, "banned", T.GROUP, "u", system=True) == R.SUCCESS
    assert check(state, "banned", T.GROUP, SYSTEM_UID) == R.SUCCESS
    state.channel("gone", T.GROUP, ["u"], ban=True, disband=True)
    for kw in ({}, {"trusted": True}, {"system": True}):
        # ban comes first except for system senders; disband stops even those
        want = R.DISBAND if "system" in kw else R.BAN
        assert check(state, "gone", T.GROUP, "u", **kw) == want
    state.channel("gone2", T.GROUP, ["u"], disband=True)
    assert check(state, "gone2", T.GROUP, "u") == R.DISBAND


def test_visitors(state: State) -> None:
    state.channel("v1", T.VISITORS, ["agent"])
    assert check(state, "v1", T.VISITORS, "v1") == R.SUCCESS  # the visitor itself
    assert check(state, "v1", T.VISITORS, "agent") == R.SUCCESS
    assert check(state, "v1", T.VISITORS, "other") == R.SUBSCRIBER_NOT_EXIST
    assert check(state, "v1", T.VISITORS, "other", trusted=True) == R.SUCCESS
    state.lists("v1", T.VISITORS, pb.ListUpdate.DENY, ["agent"])
    assert check(state, "v1", T.VISITORS, "agent") == R.IN_BLACKLIST
    assert check(state, "v9", T.VISITORS, "v9") == R.SUCCESS  # no row needed for the visitor
    state.channel("v1", T.VISITORS, disband=True)
    assert check(state, "v1", T.VISITORS, "v1") == R.DISBAND


def test_agent(state: State) -> None:
    assert check(state, "u@bot", T.AGENT, "u") == R.SUCCESS
    assert check(state, "u@bot", T.AGENT, "bot") == R.SUCCESS
    assert check(state, "u@bot", T.AGENT, "eve") == R.NOT_ALLOW_SEND
    assert check(state, "u@bot", T.AGENT, "eve", trusted=True) == R.NOT_ALLOW_SEND
    assert check(state, "u@bot", T.AGENT, "eve", system=True) == R.SUCCESS
    state.channel("u@bot", T.AGENT, disband=True)
    assert check(state, "u@bot", T.AGENT, "u") == R.DISBAND


@pytest.mark.parametrize(
    "ctype",
    [
        T.CUSTOMER_SERVICE,
        T.COMMUNITY,
        T.COMMUNITY_TOPIC,
        T.INFO,
        T.DATA,
        T.TEMP,
        T.AGENT_GROUP,
    ],
)
def test_disband_only_types(state: State, ctype: int) -> None:
    # no row, not a subscriber, on the deny list, banned: all pass; only disband refuses
    assert check(state, "c", ctype, "anyone") == R.SUCCESS
    state.lists("c", ctype, pb.ListUpdate.DENY, ["anyone"])
    state.channel("c", ctype, ban=True)
    assert check(state, "c", ctype, "anyone") == R.SUCCESS
    state.channel("c", ctype, disband=True)
    assert check(state, "c", ctype, "anyone") == R.DISBAND
    assert check(state, "c", ctype, "anyone", system=True) == R.DISBAND


def test_unknown_type(state: State) -> None:
    assert check(state, "c", 13, "u") == R.NOT_SUPPORT_CHANNEL_TYPE
    assert check(state, "c", 0, "u") == R.NOT_SUPPORT_CHANNEL_TYPE


# --- the proposing node's user-level rules ------------------------------------------------------


def person(sender: str, receiver: str) -> pb.SendItem:
    cid = f"{receiver}@{sender}"
    return pb.SendItem(from_uid=sender, channel_id=cid, channel_type=T.PERSON)


def test_decide_sender_rules() -> None:
    group = pb.SendItem(from_uid="a", channel_id="g", channel_type=T.GROUP)
    assert decide(group, Facts("a"), None, False) == (R.SUCCESS, False)
    assert decide(group, Facts("a", send_ban=True), None, False) == (R.SEND_BAN, False)
    # a system account passes everything here and is marked for apply
    assert decide(group, Facts("a", send_ban=True, system=True), None, False) == (R.SUCCESS, True)
    item = person("a", "b")
    assert decide(item, Facts("a", system=True), Facts("b", deny=frozenset({"a"})), True) == (
        R.SUCCESS,
        True,
    )
    assert decide(item, Facts("a", send_ban=True), Facts("b"), False)[0] == R.SEND_BAN


def test_decide_person_receiver_rules() -> None:
    item, a = person("a", "b"), Facts("a")
    assert decide(item, a, Facts("b"), False)[0] == R.SUCCESS
    assert decide(item, a, Facts("b", deny=frozenset({"a"})), False)[0] == R.IN_BLACKLIST
    assert decide(item, a, Facts("b", deny=frozenset({"a"}), system=True), False)[0] == R.SUCCESS
    # the allow list only matters in whitelist mode
    assert decide(item, a, Facts("b"), True)[0] == R.NOT_IN_WHITELIST
    assert decide(item, a, Facts("b", allow=frozenset({"a"})), True)[0] == R.SUCCESS
    assert decide(item, a, Facts("b", allow_stranger=True), True)[0] == R.SUCCESS
    deny_and_allow = Facts("b", deny=frozenset({"a"}), allow=frozenset({"a"}))
    assert decide(item, a, deny_and_allow, True)[0] == R.IN_BLACKLIST
    # a note to self
    assert decide(person("a", "a"), a, a, True)[0] == R.SUCCESS


def test_receiver_of() -> None:
    assert receiver_of(person("a", "b")) == "b"
    assert receiver_of(pb.SendItem(from_uid="b", channel_id="b@a", channel_type=1)) == "a"
    assert receiver_of(pb.SendItem(from_uid="a", channel_id="g", channel_type=2)) is None


def test_live_rooms_take_the_member_checks_of_a_group(state: State) -> None:
    assert check(state, "stage", T.LIVE, "outsider") == R.SUBSCRIBER_NOT_EXIST
    state.channel("stage", T.LIVE, ["viewer"])
    assert check(state, "stage", T.LIVE, "viewer") == R.SUCCESS
    state.lists("stage", T.LIVE, pb.ListUpdate.DENY, ["viewer"])
    assert check(state, "stage", T.LIVE, "viewer") == R.IN_BLACKLIST


def test_apply_sees_every_metadata_change_between_sends(state: State) -> None:
    """The machine caches permissions between metadata ops; each op must drop the cache."""

    def send(sender: str) -> int:
        item = pb.SendItem(
            from_uid=sender, channel_id="g-cache", channel_type=T.GROUP, payload=b"x"
        )
        raw = state.machine.apply(
            next(state.index),
            pb.Command(time_ms=2, send=pb.SendBatch(items=[item])).SerializeToString(),
        )
        return pb.SendBatchResult.FromString(raw).outcomes[0].reason

    state.channel("g-cache", T.GROUP, ["ann", "ben"])
    assert (send("ann"), send("cat")) == (R.SUCCESS, R.SUBSCRIBER_NOT_EXIST)
    state.lists("g-cache", T.GROUP, pb.ListUpdate.DENY, ["ann"])
    assert send("ann") == R.IN_BLACKLIST
    state.channel("g-cache", T.GROUP, ["cat"])
    assert send("cat") == R.SUCCESS
    state.channel("g-cache", T.GROUP, ban=True)
    assert (send("cat"), send("ben")) == (R.BAN, R.BAN)
