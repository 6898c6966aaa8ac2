"""Every send refusal the server emits, produced through the real APIs of real nodes: SENDACK
reason codes over WKProto and the ``reason`` of HTTP ``/message/send`` refusals.

One module-scoped node serves most tests (each test uses fresh uids and channels); person
whitelist mode needs a node started with ``messages.person_whitelist``; the cross-node user
facts invalidation needs a three-node cluster. See the "Reason codes" table in docs/api.md
for the codes covered elsewhere.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from client.wkproto import open_client
from launcher.devcluster import NodeProcess
from proto.wkproto import ReasonCode, Sub, Suback
from tests.conftest import Api, Cluster, start_node

R = ReasonCode
_names = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


class Node:
    """A node under test: its HTTP API and gateway address, and users made on it."""

    def __init__(self, api: Api, tcp: tuple[str, int]) -> None:
        self.api = api
        self.tcp = tcp

    def user(self, prefix: str = "u") -> str:
        uid = fresh(prefix)
        self.api.token(uid, f"tok-{uid}")
        return uid

    def group(self, members: list[str], ctype: int = 2, **flags: Any) -> str:
        gid = fresh("g")
        body = {"channel_id": gid, "channel_type": ctype, "subscribers": members, **flags}
        self.api.ok("/channel", body)
        return gid

    def client_send(self, uid: str, channel_id: str, channel_type: int) -> int:
        """The SENDACK reason of one SEND from ``uid``."""

        async def main() -> int:
            host, port = self.tcp
            async with open_client(host, port, uid=uid, token=f"tok-{uid}") as c:
                return (await c.send(channel_id, channel_type, b"hello")).reason_code

        return trio.run(main)

    def http_send(self, from_uid: str, channel_id: str, channel_type: int) -> int:
        """The reason of one HTTP send: 1 on success, else the refusal's ``reason``."""
        body = {
            "from_uid": from_uid,
            "channel_id": channel_id,
            "channel_type": channel_type,
            "payload": base64.b64encode(b"hello").decode(),
        }
        resp = self.api.post("/message/send", body)
        if resp.status_code == 200:
            return int(R.SUCCESS)
        assert resp.status_code in (403, 404), resp.text
        return int(resp.json()["reason"])


def _node(proc: NodeProcess) -> Node:
    host, port = proc.endpoints["tcp"].rsplit(":", 1)
    return Node(Api(proc.endpoints["http"]), (host, int(port)))


@pytest.fixture(scope="module")
def n(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    proc = start_node(tmp_path_factory.mktemp("reasons"))
    yield _node(proc)
    proc.stop()


@pytest.fixture(scope="module")
def wl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    proc = start_node(tmp_path_factory.mktemp("whitelist"), messages__person_whitelist=True)
    yield _node(proc)
    proc.stop()


# --- group channels (apply) ---------------------------------------------------------------------


def test_3_subscriber_not_exist(n: Node) -> None:
    member, stranger = n.user(), n.user()
    gid = n.group([member])
    assert n.client_send(stranger, gid, 2) == R.SUBSCRIBER_NOT_EXIST
    assert n.client_send(member, gid, 2) == R.SUCCESS
    # a client send to a group that was never created answers the same (WuKongIM v2)
    assert n.client_send(member, fresh("nogroup"), 2) == R.SUBSCRIBER_NOT_EXIST


def test_4_in_group_blacklist(n: Node) -> None:
    a, b = n.user(), n.user()
    gid = n.group([a, b])
    n.api.ok("/channel/blacklist_add", {"channel_id": gid, "channel_type": 2, "uids": [a]})
    assert n.client_send(a, gid, 2) == R.IN_BLACKLIST
    assert n.client_send(b, gid, 2) == R.SUCCESS
    n.api.ok("/channel/blacklist_remove", {"channel_id": gid, "channel_type": 2, "uids": [a]})
    assert n.client_send(a, gid, 2) == R.SUCCESS


def test_5_channel_not_exist(n: Node) -> None:
    resp = n.api.post(
        "/message/send",
        {"from_uid": "a", "channel_id": fresh("nogroup"), "channel_type": 2, "payload": "aGk="},
    )
    assert resp.status_code == 404 and resp.json()["reason"] == R.CHANNEL_NOT_EXIST


def test_11_not_allow_send(n: Node) -> None:
    owner, bot, eve = n.user(), n.user("bot"), n.user()
    channel = f"{owner}@{bot}"
    assert n.client_send(eve, channel, 11) == R.NOT_ALLOW_SEND
    assert n.http_send(eve, channel, 11) == R.NOT_ALLOW_SEND
    assert n.client_send(owner, channel, 11) == R.SUCCESS
    assert n.client_send(bot, channel, 11) == R.SUCCESS


def test_13_not_in_group_whitelist(n: Node) -> None:
    a, b = n.user(), n.user()
    gid = n.group([a, b])
    n.api.ok("/channel/whitelist_add", {"channel_id": gid, "channel_type": 2, "uids": [a]})
    assert n.client_send(b, gid, 2) == R.NOT_IN_WHITELIST
    assert n.client_send(a, gid, 2) == R.SUCCESS
    n.api.ok("/channel/whitelist_remove_all", {"channel_id": gid, "channel_type": 2})
    assert n.client_send(b, gid, 2) == R.SUCCESS


def test_19_ban(n: Node) -> None:
    a, system = n.user(), n.user("sys")
    gid = n.group([a, system], ban=1)
    assert n.client_send(a, gid, 2) == R.BAN
    assert n.http_send(a, gid, 2) == R.BAN
    n.api.ok("/user/systemuids_add", {"uids": [system]})
    assert n.client_send(system, gid, 2) == R.SUCCESS  # system accounts pass a ban


def test_24_disband(n: Node) -> None:
    a, system = n.user(), n.user("sys")
    n.api.ok("/user/systemuids_add", {"uids": [system]})
    gid = n.group([a, system], disband=1)
    assert n.client_send(a, gid, 2) == R.DISBAND
    assert n.client_send(system, gid, 2) == R.DISBAND  # ... but not a disband
    # types without member checks still honour disband (here: a community)
    cid = n.group([], ctype=4, disband=1)
    assert n.client_send(a, cid, 4) == R.DISBAND
    assert n.client_send(a, n.group([], ctype=4), 4) == R.SUCCESS


# --- user-level rules (the proposing node's pre-check) ------------------------------------------


def test_25_send_ban(n: Node) -> None:
    a, b = n.user(), n.user()
    gid = n.group([a, b])
    n.api.ok("/channel/info", {"channel_id": a, "channel_type": 1, "send_ban": 1})
    assert n.client_send(a, b, 1) == R.SEND_BAN
    assert n.client_send(a, gid, 2) == R.SEND_BAN  # a per-user global mute
    assert n.http_send(a, b, 1) == R.SEND_BAN
    n.api.ok("/channel/info", {"channel_id": a, "channel_type": 1, "send_ban": 0})
    assert n.client_send(a, b, 1) == R.SUCCESS


def test_4_in_person_blacklist(n: Node) -> None:
    alice, bob = n.user("alice"), n.user("bob")
    assert n.client_send(alice, bob, 1) == R.SUCCESS  # warms this node's facts of bob
    n.api.ok("/channel/blacklist_add", {"channel_id": bob, "channel_type": 1, "uids": [alice]})
    assert n.client_send(alice, bob, 1) == R.IN_BLACKLIST
    assert n.http_send(alice, bob, 1) == R.IN_BLACKLIST
    assert n.client_send(bob, alice, 1) == R.SUCCESS  # bob's list does not bind bob
    n.api.ok("/channel/blacklist_remove", {"channel_id": bob, "channel_type": 1, "uids": [alice]})
    assert n.client_send(alice, bob, 1) == R.SUCCESS


def test_person_receiver_that_is_a_system_account_passes(n: Node) -> None:
    alice, desk = n.user("alice"), n.user("desk")
    n.api.ok("/channel/blacklist_add", {"channel_id": desk, "channel_type": 1, "uids": [alice]})
    assert n.client_send(alice, desk, 1) == R.IN_BLACKLIST
    n.api.ok("/user/systemuids_add", {"uids": [desk]})
    assert n.client_send(alice, desk, 1) == R.SUCCESS
    n.api.ok("/user/systemuids_remove", {"uids": [desk]})
    assert n.client_send(alice, desk, 1) == R.IN_BLACKLIST


def test_deleting_a_person_channel_drops_its_lists(n: Node) -> None:
    alice, bob = n.user("alice"), n.user("bob")
    n.api.ok("/channel/blacklist_add", {"channel_id": bob, "channel_type": 1, "uids": [alice]})
    assert n.client_send(alice, bob, 1) == R.IN_BLACKLIST
    n.api.ok("/channel/delete", {"channel_id": bob, "channel_type": 1})
    assert n.client_send(alice, bob, 1) == R.SUCCESS


def test_13_not_in_person_whitelist(wl: Node) -> None:
    alice, bob, carol = wl.user("alice"), wl.user("bob"), wl.user("carol")
    assert wl.client_send(alice, bob, 1) == R.NOT_IN_WHITELIST
    assert wl.http_send(alice, bob, 1) == R.NOT_IN_WHITELIST
    wl.api.ok("/channel/whitelist_add", {"channel_id": bob, "channel_type": 1, "uids": [alice]})
    assert wl.client_send(alice, bob, 1) == R.SUCCESS
    # allow_stranger opens carol to everyone; the deny list still applies
    assert wl.client_send(alice, carol, 1) == R.NOT_IN_WHITELIST
    wl.api.ok("/channel", {"channel_id": carol, "channel_type": 1, "allow_stranger": 1})
    assert wl.client_send(alice, carol, 1) == R.SUCCESS
    wl.api.ok("/channel/blacklist_set", {"channel_id": carol, "channel_type": 1, "uids": [alice]})
    assert wl.client_send(alice, carol, 1) == R.IN_BLACKLIST


def test_4_person_blacklist_change_seen_at_once_on_another_node(tmp_path: Any) -> None:
    """Block on node 1, send through node 2 right after the answer: node 2's cached facts of
    the receiver (warmed by a first send) must have been dropped by the Invalidate call."""
    cluster = Cluster(tmp_path, 3)
    cluster.start()
    try:
        nodes = {i: Node(cluster.api(i), cluster.tcp(i)) for i in (1, 2)}
        a, b = nodes[1], nodes[2]
        alice, bob = a.user("alice"), a.user("bob")
        assert b.client_send(alice, bob, 1) == R.SUCCESS
        assert b.http_send(alice, bob, 1) == R.SUCCESS
        a.api.ok("/channel/blacklist_add", {"channel_id": bob, "channel_type": 1, "uids": [alice]})
        assert b.client_send(alice, bob, 1) == R.IN_BLACKLIST
        assert b.http_send(alice, bob, 1) == R.IN_BLACKLIST
        a.api.ok("/channel/info", {"channel_id": alice, "channel_type": 1, "send_ban": 1})
        assert b.client_send(alice, bob, 1) == R.SEND_BAN
    finally:
        cluster.stop()


def test_16_and_23_for_unusable_channel_addresses(n: Node) -> None:
    a = n.user()
    assert n.client_send(a, "no-agent-separator", 11) == R.CHANNEL_ID_ERROR
    assert n.client_send(a, "g", 13) == R.NOT_SUPPORT_CHANNEL_TYPE
    resp = n.api.post(
        "/message/send", {"from_uid": a, "channel_id": "x", "channel_type": 11, "payload": "aGk="}
    )
    assert resp.status_code == 400 and "agent" in resp.json()["msg"]


def test_23_every_sub_is_answered_with_not_support_channel_type(n: Node) -> None:
    """SUB is a v1 feature for data channels that v2 and v3 dropped: the answer is a SUBACK
    with code 23 echoing the request, and the session goes on."""
    a = n.user()
    host, port = n.tcp

    async def main() -> tuple[Suback, int]:
        async with open_client(host, port, uid=a, token=f"tok-{a}") as c:
            await c.send_frame(
                Sub(setting=0, sub_no="s-1", channel_id="data-1", channel_type=7, action=0)
            )
            # The session answers in frame order: a SEND after the SUB is acknowledged after
            # the SUBACK was written.
            result = await c.send(a, 1, b"still here")
            (suback,) = [f for f in c.other_frames if isinstance(f, Suback)]
            return suback, result.reason_code

    suback, after = trio.run(main)
    assert (suback.sub_no, suback.channel_id, suback.channel_type) == ("s-1", "data-1", 7)
    assert suback.reason_code == R.NOT_SUPPORT_CHANNEL_TYPE
    assert after == R.SUCCESS
