"""Every HTTP route against one three-node cluster, with valid input and with bad input.

**Spread over nodes.** For a route about one key (a uid, a channel), the suite asks which node
leads the slot group owning the key, writes through one of the two other nodes and reads
through the third (``Suite.spread``); most reads are then repeated on every node and must give
the same answer (``Suite.everywhere``). Routes without a key go to every node or round-robin.
Leadership can move between the question and the request (the controller balances leaders);
the request is then just served by some other route through the cluster, which is also fine.

**Valid cases** are the ``test_*`` functions marked ``@covers("METHOD /path", ...)``: each
asserts the route's effect as seen through another node (a subscriber added through node 2 is
listed by node 3; a message sent through node 2 comes out of ``/channel/messagesync`` on node 3
with the right seq), not just a 200. A fixture checks that a marked test really called each
route it claims and got the expected status (200, unless ``covers`` says otherwise).

**Bad-input cases** are the table ``BAD``. What counts as bad input:

* a route with required or typed input: a missing or wrongly typed field answers HTTP 400 and
  ``msg`` contains the field's name (``uid``, ``channel_type``, ``message_seqs``, ...);
* a route with no input at all (``GET /health``, ``/healthz``, ``/readyz``, ``/metrics``,
  ``/route``, ``/cluster/status``, ``/cluster/digest``, ``/user/systemuids``,
  ``/webhook/status``): the wrong method answers 405 and ``msg`` names the method.

Besides, every POST route answers a body that is not JSON with a 400 naming the problem.

**Completeness.** ``test_every_route_has_a_valid_and_a_bad_input_case`` builds the server's own
route table (``node.http.api.build_router``) and requires that the routes with a valid case and
the routes with a bad-input case are both exactly the registered routes: a new route without
cases here fails the suite.

**Cluster administration on a shared cluster.** ``/cluster/join`` admits nobody (a node joins
with its own signed call): a well-formed join, of a member or of a new node, is 410 and leaves
the placement unchanged on every node. A valid
``/cluster/leave`` would shrink the shared cluster (or strand it below ``cluster.replicas``), so
its valid case is a well-formed leave of a member, refused with 409 because the cluster would
fall below ``cluster.replicas`` = 3, with the placement left unchanged on every node; a real
leave is shown in ``test_membership.py`` on a cluster of its own.

``/webhook/status`` needs webhooks: the cluster posts them to a receiver in this process.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from unittest.mock import MagicMock

import httpx
import pytest
import trio

from client.wkproto import ConnectRefused, open_client
from node.channels import person_channel_id
from node.config import Config
from node.http.api import build_router
from node.http.common import ApiContext
from proto.wkproto import Event, ReasonCode
from tests.conftest import Api, Cluster, eventually
from tests.integration.test_webhooks import Receiver

T = TypeVar("T")
RECEIPT = 0x80
"""The WKProto setting bit that asks for read receipts."""
_ids = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def text_of(message: dict[str, Any]) -> str:
    return base64.b64decode(message["payload"]).decode()


# --- the cluster and the recording client --------------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    status: int

    @property
    def route(self) -> str:
        return f"{self.method} {self.path}"


class Node:
    """One node's HTTP API (the shared ``Api`` client); every request is recorded, so that a
    valid case can be checked to have really exercised the routes it claims."""

    def __init__(self, node_id: int, api: Api, calls: list[Call]) -> None:
        self.id = node_id
        self.api = api
        self._calls = calls

    def _record(self, method: str, path: str, resp: httpx.Response) -> httpx.Response:
        self._calls.append(Call(method, path, resp.status_code))
        return resp

    def post(self, path: str, body: Any) -> httpx.Response:
        return self._record("POST", path, self.api.post(path, body))

    def get(self, path: str, **query: Any) -> httpx.Response:
        return self._record("GET", path, self.api.http.get(path, params=query))

    def ok(self, path: str, body: Any) -> Any:
        resp = self.post(path, body)
        assert resp.status_code == 200, (self.id, path, resp.status_code, resp.text)
        return resp.json()

    def ok_get(self, path: str, **query: Any) -> Any:
        resp = self.get(path, **query)
        assert resp.status_code == 200, (self.id, path, resp.status_code, resp.text)
        return resp.json()

    def refused(self, path: str, body: Any, status: int) -> dict[str, Any]:
        resp = self.post(path, body)
        assert resp.status_code == status, (self.id, path, resp.status_code, resp.text)
        data: dict[str, Any] = resp.json()
        return data


@dataclass
class Suite:
    cluster: Cluster
    receiver: Receiver
    nodes: dict[int, Node]
    calls: list[Call] = field(default_factory=list)
    _turn: Iterator[int] = field(default_factory=itertools.count)

    def spread(self, key: str) -> tuple[Node, Node]:
        """(writer, reader): the two nodes that do not lead the slot group owning ``key``
        (which one writes alternates from call to call)."""
        leader = self.cluster.leader_of_key(key, via=1)
        writer, reader = (self.nodes[i] for i in sorted(self.nodes) if i != leader)
        return (reader, writer) if next(self._turn) % 2 else (writer, reader)

    def everywhere(self, fetch: Callable[[Node], T], first: Node | None = None) -> T:
        """``fetch`` through every node (``first`` first): the answers must all be equal."""
        order = sorted(self.nodes.values(), key=lambda n: n is not first)
        answers = [(n.id, fetch(n)) for n in order]
        for node_id, answer in answers[1:]:
            assert answer == answers[0][1], f"node {node_id} differs from node {answers[0][0]}"
        return answers[0][1]

    def round_robin(self) -> Node:
        return self.nodes[1 + next(self._turn) % len(self.nodes)]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    receiver = Receiver()
    # With both tokens, as a deployment runs: every route below is also a route that works
    # with the API token (and /cluster/* with the admin token).
    cluster = Cluster(
        Path(tmp_path_factory.mktemp("http3")),
        3,
        webhook__url=receiver.url,
        auth__api_token="http3-api-token",
    )
    cluster.start()
    calls: list[Call] = []
    apis = {i: cluster.api(i) for i in cluster.nodes}
    try:
        yield Suite(cluster, receiver, {i: Node(i, api, calls) for i, api in apis.items()}, calls)
    finally:
        for api in apis.values():
            api.http.close()
        cluster.stop()
        receiver.close()


# --- declaring and checking the valid cases -------------------------------------------------

VALID: dict[str, str] = {}
"""Route -> the test that is its valid case."""
VALID["POST /cluster/drain"] = "tests/integration/test_drain.py"
"""A drain ends its node: the shared cluster of this suite cannot host one, test_drain does."""
Test = TypeVar("Test", bound=Callable[..., None])


def covers(*routes: str, status: int = 200) -> Callable[[Test], Test]:
    """Mark a test as the valid case of ``routes`` ("METHOD /path"); it must call each of them
    and get ``status`` at least once."""

    def mark(fn: Test) -> Test:
        for route in routes:
            assert route not in VALID, f"{route} has two valid cases"
            VALID[route] = fn.__name__
        fn._covers = (routes, status)  # type: ignore[attr-defined]
        return fn

    return mark


@pytest.fixture(autouse=True)
def _claimed_routes_were_called(request: pytest.FixtureRequest) -> Iterator[None]:
    claim: tuple[tuple[str, ...], int] | None = getattr(request.function, "_covers", None)
    if claim is None:
        yield
        return
    suite = cast(Suite, request.getfixturevalue("suite"))
    suite.calls.clear()
    yield
    answered = {c.route for c in suite.calls if c.status == claim[1]}
    missing = [r for r in claim[0] if r not in answered]
    assert not missing, f"claimed as covered (status {claim[1]}) but not exercised: {missing}"


# --- shared steps ---------------------------------------------------------------------------


def new_users(suite: Suite, n: int) -> list[str]:
    uids = [fresh("u") for _ in range(n)]
    for uid in uids:
        suite.round_robin().api.token(uid, f"tok-{uid}")
    return uids


def new_group(suite: Suite, members: list[str]) -> tuple[str, Node, Node]:
    """A fresh group with ``members``, created through a node that does not lead its group;
    (its id, the writer, the reader)."""
    gid = fresh("g")
    writer, reader = suite.spread(gid)
    writer.ok("/channel", {"channel_id": gid, "channel_type": 2, "subscribers": members})
    return gid, writer, reader


def send(node: Node, from_uid: str, channel_id: str, text: str, **extra: Any) -> dict[str, Any]:
    body = {"from_uid": from_uid, "channel_id": channel_id, "channel_type": 2, "payload": b64(text)}
    sent: dict[str, Any] = node.ok("/message/send", {**body, **extra})
    return sent


def sync(node: Node, login_uid: str, channel_id: str, channel_type: int = 2) -> list[Any]:
    body = {"login_uid": login_uid, "channel_id": channel_id, "channel_type": channel_type}
    messages: list[Any] = node.ok("/channel/messagesync", {**body, "limit": 100})["messages"]
    return messages


def seqs_and_texts(messages: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(m["message_seq"], text_of(m)) for m in messages]


def conversations(node: Node, uid: str) -> dict[tuple[str, int], dict[str, Any]]:
    rows = node.ok("/conversation/sync", {"uid": uid, "msg_count": 5})
    return {(r["channel_id"], r["channel_type"]): r for r in rows}


def list_of(node: Node, route: str, channel_id: str, channel_type: int = 2) -> list[str]:
    answer: list[str] = node.ok_get(route, channel_id=channel_id, channel_type=channel_type)
    return answer


# --- completeness ---------------------------------------------------------------------------


def registered_routes() -> set[str]:
    # Registration only closes over the context (and reads its auth settings); handlers use
    # it when they serve a request.
    router = build_router(cast(ApiContext, MagicMock(config=Config())))
    return {f"{method} {path}" for method, path in router.paths()}


def test_every_route_has_a_valid_and_a_bad_input_case() -> None:
    registered = registered_routes()
    bad = {case.route for case in BAD}
    assert len(registered) > 40, registered  # the route table really was read
    no_valid = sorted(registered - set(VALID))
    assert not no_valid, f"routes without a valid case: {no_valid}"
    no_bad = sorted(registered - bad)
    assert not no_bad, f"routes without a bad-input case: {no_bad}"
    unknown = sorted((set(VALID) | bad) - registered)
    assert not unknown, f"cases for routes that are not registered: {unknown}"


# --- valid cases: health, routing, cluster administration -----------------------------------


@covers("GET /healthz", "GET /readyz", "GET /metrics", "GET /varz", "GET /connz")
def test_every_node_answers_for_its_own_monitoring(suite: Suite) -> None:
    for i, node in suite.nodes.items():
        assert node.ok_get("/healthz") == {"status": "ok"}
        # Polled: while the controller moves a leadership, a group is leaderless for a moment.
        deadline = time.monotonic() + 10
        while (ready := node.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.05)
        assert ready.json() == {"status": "ready"}
        metrics = node.get("/metrics")
        assert metrics.status_code == 200 and 'raftchat_group_term{group="0"}' in metrics.text
        varz = node.ok_get("/varz", show="conn")
        assert varz["server_id"] == str(i) and varz["connections"] == len(varz["conns"])
        connz = node.ok_get("/connz", sort="uptimeDesc", limit=5)
        assert connz["limit"] == 5 and connz["total"] >= len(connz["connections"])


@covers("GET /health", "GET /route", "GET /cluster/status")
def test_every_node_reports_itself_and_the_same_cluster(suite: Suite) -> None:
    hosts = {str(i): host for i, host in suite.cluster.hosts.items()}
    views = []
    for i, node in suite.nodes.items():
        assert node.ok_get("/health") == {"status": "ok"}
        host, port = suite.cluster.tcp(i)
        route = node.ok_get("/route")
        assert route["tcp_addr"] == f"{host}:{port}" and route["ws_addr"].startswith("ws://")
        status = node.ok_get("/cluster/status")
        assert status["node_id"] == i and status["nodes"] == hosts
        assert len(status["slot_table"]) == 256
        assert {g["group"] for g in status["groups"]} == {0, *status["slot_table"]}
        views.append((status["placement_version"], status["slot_table"]))
    assert views.count(views[0]) == 3, "nodes disagree on the placement"


@covers("POST /route/batch")
def test_route_batch_gives_every_uid_one_node_and_every_node_agrees(suite: Suite) -> None:
    uids = [f"rb{i}" for i in range(40)]
    addresses = {f"{host}:5100" for host in suite.cluster.hosts.values()}

    def answers() -> list[dict[str, str]]:
        out = []
        for node in suite.nodes.values():
            entries = node.ok("/route/batch", uids)
            placed = {u: entry["tcp_addr"] for entry in entries for u in entry["uids"]}
            assert sorted(placed) == sorted(uids) and set(placed.values()) <= addresses
            out.append(placed)
        return out

    # Nodes learn each other's addresses once a second from their start: wait until each
    # hands out all three, then they agree on every uid.
    eventually(
        lambda: all(set(a.values()) == addresses for a in answers()), what="every node known"
    )
    first, second, third = answers()
    assert first == second == third


@covers("GET /cluster/digest")
def test_digest_shows_the_same_replica_on_every_node(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    gid, writer, _ = new_group(suite, [alice, bob])
    for text in ("one", "two"):
        send(writer, alice, gid, text)
    name = f"2:{gid}"

    def replicas() -> list[Any]:
        found = []
        for i, node in suite.nodes.items():
            digest = node.ok_get("/cluster/digest")
            assert digest["node"] == i
            found += [g["channels"][name] for g in digest["groups"] if name in g["channels"]]
        return found

    # Followers apply committed entries on their own schedule (they learn the commit index with
    # the next entries or heartbeat): nothing to wait on but the data.
    def converged() -> bool:
        found = replicas()
        return len(found) == 3 and {(head, digest) for head, digest in found} == {(2, found[0][1])}

    eventually(converged, what="every replica holding both messages, with equal digests")


@covers("POST /cluster/join", status=410)
def test_a_join_over_http_admits_nobody_and_changes_nothing(suite: Suite) -> None:
    before = suite.nodes[1].ok_get("/cluster/status")
    hosts = {str(i): host for i, host in suite.cluster.hosts.items()}
    # Each member at its own address, a member at another one, and a new node.
    joins = [*suite.cluster.hosts.items(), (1, "127.0.0.254"), (9, "127.0.0.254")]
    for i, (node_id, host) in enumerate(joins):
        via = suite.nodes[i % 3 + 1]
        gone = via.refused("/cluster/join", {"node_id": node_id, "host": host}, 410)
        assert "joins by itself" in gone["msg"] and "nothing was changed" in gone["msg"]
    for node in suite.nodes.values():
        after = node.ok_get("/cluster/status")
        assert after["nodes"] == hosts
        assert after["placement_version"] == before["placement_version"]


@covers("POST /cluster/leave", status=409)
def test_leave_below_the_replica_count_is_refused_and_changes_nothing(suite: Suite) -> None:
    before = suite.nodes[1].ok_get("/cluster/status")
    for member in suite.cluster.hosts:
        via = suite.nodes[member % 3 + 1]
        refusal = via.refused("/cluster/leave", {"node_id": member}, 409)
        assert "cluster.replicas" in refusal["msg"] and f"node {member}" in refusal["msg"]
    missing = suite.nodes[3].refused("/cluster/leave", {"node_id": 9}, 404)
    assert "node 9 is not a member" in missing["msg"]
    for node in suite.nodes.values():
        after = node.ok_get("/cluster/status")
        assert after["nodes"] == before["nodes"]
        assert after["placement_version"] == before["placement_version"]


# --- valid cases: users ---------------------------------------------------------------------


@covers(
    "POST /cluster/backup/checkpoint", "GET /cluster/backup/file", "POST /cluster/backup/release"
)
def test_a_backup_checkpoint_is_read_in_chunks_then_released(suite: Suite) -> None:
    # Only the group's leader takes one: another node names it (leadership may move between
    # the answer and the next request: then ask again).
    taken, node = None, suite.nodes[1]
    for _ in range(10):
        resp = node.post("/cluster/backup/checkpoint", {"group": 1})
        if resp.status_code == 200:
            taken = resp.json()
            break
        assert resp.status_code == 409 and "leader" in resp.json()["msg"], resp.text
        node = suite.nodes[resp.json()["leader"] or 1 + node.id % 3]
    assert taken is not None and taken["group"] == 1 and taken["node_id"] == node.id
    assert taken["index"] >= 1 and taken["term"] >= 1
    names = {f["name"] for f in taken["files"]}
    assert "CURRENT" in names and all("/" not in n for n in names), names
    for f in taken["files"]:
        data = b""
        while len(data) < f["size"]:
            got = node.get("/cluster/backup/file", id=taken["id"], name=f["name"], offset=len(data))
            assert got.status_code == 200 and got.content, got.text
            assert len(got.content) <= taken["chunk_bytes"]
            data += got.content
        assert hashlib.sha256(data).hexdigest() == f["sha256"], f
    # Only its own files, and only from its own node.
    other = suite.nodes[1 + node.id % 3]
    stray = other.get("/cluster/backup/file", id=taken["id"], name="CURRENT")
    assert stray.status_code == 404, stray.text
    outside = node.get("/cluster/backup/file", id=taken["id"], name="../identity.json")
    assert outside.status_code == 404, outside.text
    assert node.ok("/cluster/backup/release", {"id": taken["id"]})["released"] is True
    gone = node.get("/cluster/backup/file", id=taken["id"], name="CURRENT")
    assert gone.status_code == 404, gone.text
    assert node.ok("/cluster/backup/release", {"id": taken["id"]})["released"] is False


@covers("POST /user/token")
def test_a_token_set_through_one_node_logs_in_on_every_node(suite: Suite) -> None:
    uid = fresh("u")
    writer, _ = suite.spread(uid)
    writer.ok("/user/token", {"uid": uid, "token": "right", "device_flag": 1})

    async def main() -> None:
        for i in suite.nodes:
            host, port = suite.cluster.tcp(i)
            async with open_client(host, port, uid=uid, token="right", device_flag=1) as c:
                await c.ping()
            with pytest.raises(ConnectRefused) as refused:
                async with open_client(host, port, uid=uid, token="wrong", device_flag=1):
                    pass
            assert refused.value.reason_code == ReasonCode.AUTH_FAIL

    trio.run(main)


@covers("POST /user/onlinestatus", "POST /user/device_quit")
def test_online_status_and_device_quit_reach_sessions_on_other_nodes(suite: Suite) -> None:
    (uid,) = new_users(suite, 1)
    offline = fresh("nobody")
    writer, reader = suite.spread(uid)
    host, port = suite.cluster.tcp(reader.id)

    async def main() -> None:
        async with open_client(host, port, uid=uid, token=f"tok-{uid}") as client:
            online = suite.everywhere(lambda n: n.ok("/user/onlinestatus", [uid, offline]))
            assert online == [{"uid": uid, "device_flag": 0, "online": 1}]
            writer.ok("/user/device_quit", {"uid": uid, "device_flag": 0})
            await client.wait_closed(timeout_s=10)
        with pytest.raises(ConnectRefused) as refused:
            async with open_client(host, port, uid=uid, token=f"tok-{uid}"):
                pass
        assert refused.value.reason_code == ReasonCode.AUTH_FAIL

    trio.run(main)
    # The server notices the closed socket with no event to wait on.
    eventually(lambda: writer.ok("/user/onlinestatus", [uid]) == [], what="offline everywhere")


@covers("POST /user/systemuids_add", "GET /user/systemuids", "POST /user/systemuids_remove")
def test_system_uids_are_gathered_from_every_group(suite: Suite) -> None:
    bots = [fresh("bot") for _ in range(6)]  # several uids: several slot groups
    suite.nodes[1].ok("/user/systemuids_add", {"uids": bots})
    listed = suite.everywhere(lambda n: n.ok_get("/user/systemuids"), first=suite.nodes[2])
    assert set(bots) <= set(listed) and listed == sorted(listed)
    suite.nodes[3].ok("/user/systemuids_remove", {"uids": bots[:3]})
    listed = suite.everywhere(lambda n: n.ok_get("/user/systemuids"))
    assert not set(bots[:3]) & set(listed) and set(bots[3:]) <= set(listed)


# --- valid cases: channels, subscribers, lists ----------------------------------------------


@covers("POST /channel", "GET /channel/info", "POST /channel/info", "GET /channel/subscribers")
def test_channel_create_info_and_subscribers_across_nodes(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    gid, writer, reader = new_group(suite, [bob, alice])

    def info(n: Node) -> Any:
        return n.ok_get("/channel/info", channel_id=gid, channel_type=2)

    flags = {"ban": 0, "disband": 0, "send_ban": 0, "allow_stranger": 0, "large": 0}
    assert suite.everywhere(info, first=reader) == {
        "channel_id": gid,
        "channel_type": 2,
        **flags,
    }
    members = suite.everywhere(lambda n: list_of(n, "/channel/subscribers", gid), first=reader)
    assert sorted(members) == [alice, bob]
    writer.ok("/channel/info", {"channel_id": gid, "channel_type": 2, "ban": 1})
    assert suite.everywhere(info, first=reader)["ban"] == 1
    body = {"from_uid": alice, "channel_id": gid, "channel_type": 2, "payload": b64("x")}
    assert reader.refused("/message/send", body, 403)["reason"] == ReasonCode.BAN
    assert sorted(list_of(reader, "/channel/subscribers", gid)) == [alice, bob]  # untouched


@covers(
    "POST /channel/subscriber_add",
    "POST /channel/subscriber_remove",
    "POST /channel/subscriber_remove_all",
)
def test_subscriber_changes_are_seen_through_the_third_node(suite: Suite) -> None:
    alice, bob, carol = new_users(suite, 3)
    gid, writer, reader = new_group(suite, [alice])

    def members() -> list[str]:
        return sorted(suite.everywhere(lambda n: list_of(n, "/channel/subscribers", gid), reader))

    channel = {"channel_id": gid, "channel_type": 2}
    writer.ok("/channel/subscriber_add", {**channel, "subscribers": [bob, carol]})
    assert members() == [alice, bob, carol]
    writer.ok("/channel/subscriber_remove", {**channel, "subscribers": [bob]})
    assert members() == [alice, carol]
    writer.ok("/channel/subscriber_add", {**channel, "subscribers": [bob], "reset": 1})
    assert members() == [bob]
    writer.ok("/channel/subscriber_remove_all", channel)
    assert members() == []
    assert reader.ok_get("/channel/info", **channel)["channel_id"] == gid  # the channel stays


@covers("POST /channel/delete")
def test_a_deleted_channel_is_gone_on_every_node(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    gid, writer, reader = new_group(suite, [alice, bob])
    sent = send(writer, alice, gid, "before")
    writer.ok("/channel/delete", {"channel_id": gid, "channel_type": 2})
    for node in suite.nodes.values():
        missing = node.get("/channel/info", channel_id=gid, channel_type=2)
        assert missing.status_code == 404, missing.text
        assert list_of(node, "/channel/subscribers", gid) == []
    body = {"from_uid": alice, "channel_id": gid, "channel_type": 2, "payload": b64("after")}
    assert reader.refused("/message/send", body, 404)["reason"] == ReasonCode.CHANNEL_NOT_EXIST
    # The history stays readable.
    assert [m["message_id"] for m in sync(reader, bob, gid)] == [sent["message_id"]]


LIST_ROUTES = [
    f"POST /channel/{kind}_{mode}"
    for kind in ("blacklist", "whitelist")
    for mode in ("add", "set", "remove", "remove_all")
] + ["GET /channel/blacklist", "GET /channel/whitelist"]


@covers(*LIST_ROUTES)
def test_list_changes_are_seen_through_the_third_node(suite: Suite) -> None:
    a, b, c = (fresh("m") for _ in range(3))
    for kind in ("blacklist", "whitelist"):
        gid = fresh("g")  # lists of a group may be set before the group exists
        writer, reader = suite.spread(gid)
        channel = {"channel_id": gid, "channel_type": 2}

        def members(kind: str = kind, gid: str = gid, reader: Node = reader) -> list[str]:
            return suite.everywhere(lambda n: list_of(n, f"/channel/{kind}", gid), reader)

        writer.ok(f"/channel/{kind}_add", {**channel, "uids": [b, a]})
        assert members() == sorted([a, b])
        writer.ok(f"/channel/{kind}_set", {**channel, "uids": [c]})
        assert members() == [c]
        writer.ok(f"/channel/{kind}_remove", {**channel, "uids": [c]})
        assert members() == []
        writer.ok(f"/channel/{kind}_add", {**channel, "uids": [a, b]})
        writer.ok(f"/channel/{kind}_remove_all", channel)
        assert members() == []


def test_a_person_blacklist_refuses_sends_received_by_any_node(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    writer, reader = suite.spread(bob)  # bob's own lists live in bob's slot group
    body = {"from_uid": alice, "channel_id": bob, "channel_type": 1, "payload": b64("hi")}
    writer.ok("/channel/blacklist_add", {"channel_id": bob, "channel_type": 1, "uids": [alice]})
    for node in suite.nodes.values():
        assert node.refused("/message/send", body, 403)["reason"] == ReasonCode.IN_BLACKLIST
    reader.ok("/channel/blacklist_remove", {"channel_id": bob, "channel_type": 1, "uids": [alice]})
    for node in suite.nodes.values():
        node.ok("/message/send", body)


# --- valid cases: sending and syncing -------------------------------------------------------


@covers("POST /message/send", "POST /channel/messagesync", "GET /channel/max_message_seq")
def test_a_send_through_one_node_is_synced_through_another(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    gid, writer, reader = new_group(suite, [alice, bob])
    sent = [send(writer, alice, gid, f"m{i}", client_msg_no=f"c{i}") for i in range(1, 4)]
    assert [s["message_seq"] for s in sent] == [1, 2, 3]
    # A retry through another node is recognised by its client_msg_no.
    assert send(reader, alice, gid, "m3", client_msg_no="c3") == sent[2]
    page = suite.everywhere(lambda n: sync(n, bob, gid), first=reader)
    assert seqs_and_texts(page) == [(1, "m1"), (2, "m2"), (3, "m3")]
    assert [m["message_id"] for m in page] == [s["message_id"] for s in sent]
    assert {m["from_uid"] for m in page} == {alice}
    head = suite.everywhere(
        lambda n: n.ok_get("/channel/max_message_seq", channel_id=gid, channel_type=2)
    )
    assert head == {"message_seq": 3}
    # A person message, seen by the receiver under the sender's uid.
    pwriter, preader = suite.spread(person_channel_id(alice, bob))
    body = {"from_uid": alice, "channel_id": bob, "channel_type": 1, "payload": b64("psst")}
    psent = pwriter.ok("/message/send", body)
    (got,) = sync(preader, bob, alice, channel_type=1)
    assert (got["message_seq"], got["channel_id"], text_of(got)) == (
        psent["message_seq"],
        alice,
        "psst",
    )


@covers("POST /message/sendbatch")
def test_a_batch_send_reaches_each_receiver(suite: Suite) -> None:
    news, u1, u2 = new_users(suite, 3)
    body = {"from_uid": news, "subscribers": [u1, u2], "payload": b64("extra!")}
    assert suite.nodes[2].ok("/message/sendbatch", body) == {"fail_uids": [], "reason": []}
    for uid in (u1, u2):
        _, reader = suite.spread(person_channel_id(news, uid))
        (got,) = sync(reader, uid, news, channel_type=1)
        assert (got["from_uid"], text_of(got)) == (news, "extra!")


@covers("POST /message/sync", "POST /message/syncack")
def test_command_messages_sync_and_ack_through_different_nodes(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    gid, writer, reader = new_group(suite, [alice, bob])
    sent = send(writer, alice, gid, "cmd", header={"sync_once": 1})
    page = reader.ok("/message/sync", {"uid": bob, "device_flag": 0})
    assert [(m["message_id"], m["channel_id"], text_of(m)) for m in page] == [
        (sent["message_id"], f"{gid}____cmd", "cmd")
    ]
    assert page[0]["channel_message_seq"] == sent["message_seq"]
    third = next(n for n in suite.nodes.values() if n not in (writer, reader))
    ack = {"uid": bob, "device_flag": 0, "last_message_seq": page[0]["message_seq"]}
    third.ok("/message/syncack", ack)
    assert suite.everywhere(lambda n: n.ok("/message/sync", {"uid": bob})) == []
    # Another device of bob has not acknowledged it.
    assert len(writer.ok("/message/sync", {"uid": bob, "device_flag": 1})) == 1


# --- valid cases: lookups -------------------------------------------------------------------


@covers(
    "POST /messages",
    "POST /message",
    "GET /message/byclientmsgno",
    "GET /channel/last_message",
)
def test_lookups_find_messages_from_any_node(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    gid, writer, reader = new_group(suite, [alice, bob])
    first = send(writer, alice, gid, "first", client_msg_no="look-1")
    second = send(writer, alice, gid, "second", client_msg_no="look-2")
    ids = [second["message_idstr"], first["message_id"], 12345]  # an unknown id is left out

    def by_ids(n: Node) -> list[tuple[int, str]]:
        found = n.ok("/messages", {"message_ids": ids, "login_uid": bob})
        return [(m["message_id"], text_of(m)) for m in found]

    assert suite.everywhere(by_ids, first=reader) == [
        (second["message_id"], "second"),
        (first["message_id"], "first"),
    ]
    one = reader.ok("/message", {"message_id": first["message_idstr"], "login_uid": bob})
    assert (one["message_seq"], text_of(one)) == (1, "first")
    assert reader.post("/message", {"message_id": 12345}).status_code == 404
    query = {"channel_id": gid, "channel_type": 2, "from_uid": alice, "client_msg_no": "look-2"}
    found = suite.everywhere(lambda n: n.ok_get("/message/byclientmsgno", **query), reader)
    assert found["message_id"] == second["message_id"]
    last = suite.everywhere(
        lambda n: n.ok_get("/channel/last_message", channel_id=gid, channel_type=2), reader
    )
    assert (last["message_seq"], text_of(last)) == (2, "second")


# --- valid cases: message operations and retention ------------------------------------------


@covers("POST /message/revoke", "POST /message/edit")
def test_revoke_and_edit_are_seen_through_the_third_node(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    gid, writer, reader = new_group(suite, [alice, bob])
    gone = send(writer, alice, gid, "oops")
    fixed = send(writer, alice, gid, "typo")
    target = {"channel_id": gid, "channel_type": 2, "from_uid": alice}
    revoked = writer.ok("/message/revoke", {**target, "message_id": gone["message_idstr"]})
    assert (revoked["message_seq"], revoked["revoker"]) == (1, alice)
    edited = writer.ok(
        "/message/edit", {**target, "message_seq": fixed["message_seq"], "payload": b64("fixed")}
    )
    assert edited["version"] == 1
    page = suite.everywhere(lambda n: sync(n, bob, gid), first=reader)
    first, second, notice = page
    assert (first["revoke"], first["revoker"], first["payload"]) == (1, alice, "")
    assert (text_of(second), second["edited"]) == ("fixed", 1)
    assert json.loads(text_of(notice))["type"] == 1006


@covers("POST /message/delete")
def test_delete_for_one_user_hides_only_from_that_user(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    gid, writer, reader = new_group(suite, [alice, bob])
    for text in ("a", "b", "c"):
        send(writer, alice, gid, text)
    writer.ok(
        "/message/delete", {"uid": bob, "channel_id": gid, "channel_type": 2, "message_seqs": [2]}
    )
    assert seqs_and_texts(suite.everywhere(lambda n: sync(n, bob, gid), reader)) == [
        (1, "a"),
        (3, "c"),
    ]
    assert [m["message_seq"] for m in sync(reader, alice, gid)] == [1, 2, 3]


@covers("POST /message/readed", "GET /message/receipt")
def test_read_receipts_recorded_through_one_node_are_read_through_another(suite: Suite) -> None:
    alice, bob, carol = new_users(suite, 3)
    gid, writer, reader = new_group(suite, [alice, bob, carol])
    sent = send(writer, alice, gid, "read me", setting=RECEIPT)
    channel = {"channel_id": gid, "channel_type": 2}
    writer.ok("/message/readed", {**channel, "uid": bob, "message_seqs": [sent["message_seq"]]})
    receipt = suite.everywhere(
        lambda n: n.ok_get("/message/receipt", **channel, message_seq=1, login_uid=alice), reader
    )
    assert receipt == {
        "message_id": sent["message_id"],
        "message_idstr": sent["message_idstr"],
        "message_seq": 1,
        "receipt": 1,
        "read_count": 1,
        "unread_count": 1,
        "readers": [bob],
    }


@covers("POST /channel/messages_delete", "POST /channel/retention")
def test_range_deletion_and_retention_are_seen_through_the_third_node(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    gid, writer, reader = new_group(suite, [alice, bob])
    for text in ("a", "b", "c"):
        send(writer, alice, gid, text)
    channel = {"channel_id": gid, "channel_type": 2}
    done = writer.ok("/channel/messages_delete", {**channel, "max_message_seq": 2})
    assert done == {"status": 200, "deleted_to_seq": 2}
    assert seqs_and_texts(suite.everywhere(lambda n: sync(n, bob, gid), reader)) == [(3, "c")]
    assert send(writer, alice, gid, "d")["message_seq"] == 4  # seqs are never reused
    # Retention of about 9 ms: the group leader's reclaim pass (every second) drops the rest.
    writer.ok("/channel/retention", {**channel, "retention_days": 1e-7})
    eventually(lambda: sync(reader, bob, gid) == [], what="retention reclaiming the messages")
    assert suite.everywhere(lambda n: sync(n, bob, gid)) == []


@covers("POST /message/import")
def test_imported_history_is_read_through_the_third_node(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    gid, writer, reader = new_group(suite, [alice, bob])
    send(writer, alice, gid, "live")
    at = int(time.time()) - 86_400
    messages = [
        {"from_uid": bob, "client_msg_no": "old-1", "timestamp": at, "payload": b64("old one")},
        {"from_uid": alice, "client_msg_no": "old-2", "timestamp": at + 1, "payload": b64("two")},
    ]
    answer = writer.ok(
        "/message/import", {"channel_id": gid, "channel_type": 2, "messages": messages}
    )
    assert [(m["client_msg_no"], m["message_seq"]) for m in answer["messages"]] == [
        ("old-1", 2),
        ("old-2", 3),
    ]
    page = suite.everywhere(lambda n: sync(n, bob, gid), reader)
    assert seqs_and_texts(page) == [(1, "live"), (2, "old one"), (3, "two")]
    assert [(m["from_uid"], m["timestamp"]) for m in page[1:]] == [(bob, at), (alice, at + 1)]
    assert conversations(reader, bob)[(gid, 2)]["unread"] == 1  # the history is not unread


# --- valid cases: conversations -------------------------------------------------------------


@covers(
    "POST /conversation/sync",
    "POST /conversations/setUnread",
    "POST /conversations/clearUnread",
    "POST /conversations/clearMessages",
)
def test_conversation_operations_are_seen_through_the_third_node(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    gid, writer, reader = new_group(suite, [alice, bob])
    for text in ("a", "b"):
        send(writer, alice, gid, text)
    key = (gid, 2)

    def row() -> dict[str, Any]:
        return suite.everywhere(lambda n: conversations(n, bob), reader)[key]

    first = row()
    assert (first["unread"], first["last_msg_seq"], first["readed_to_msg_seq"]) == (2, 2, 0)
    assert seqs_and_texts(first["recents"]) == [(1, "a"), (2, "b")]
    op = {"uid": bob, "channel_id": gid, "channel_type": 2}
    writer.ok("/conversations/setUnread", {**op, "unread": 5})
    assert row()["unread"] == 5
    writer.ok("/conversations/clearUnread", op)
    assert (row()["unread"], row()["readed_to_msg_seq"]) == (0, 2)
    writer.ok("/conversations/clearMessages", op)
    cleared = row()
    assert (cleared["recents"], cleared["last_msg_seq"]) == ([], 2)
    assert sync(reader, bob, gid) == []  # hidden from bob only
    assert len(sync(reader, alice, gid)) == 2


@covers("POST /conversations/delete", "GET /conversations/peerRead")
def test_person_conversation_delete_and_peer_read(suite: Suite) -> None:
    alice, bob = new_users(suite, 2)
    writer, reader = suite.spread(person_channel_id(alice, bob))
    body = {"from_uid": alice, "channel_id": bob, "channel_type": 1, "payload": b64("hi")}
    writer.ok("/message/send", body)

    def peer_read(n: Node) -> Any:
        return n.ok_get("/conversations/peerRead", uid=alice, channel_id=bob, channel_type=1)

    assert suite.everywhere(peer_read, reader)["readed_to_msg_seq"] == 0
    writer.ok("/conversations/clearUnread", {"uid": bob, "channel_id": alice, "channel_type": 1})
    assert suite.everywhere(peer_read, reader) == {
        "uid": alice,
        "peer_uid": bob,
        "readed_to_msg_seq": 1,
    }
    assert (alice, 1) in conversations(reader, bob)
    writer.ok("/conversations/delete", {"uid": bob, "channel_id": alice, "channel_type": 1})
    assert (alice, 1) not in suite.everywhere(lambda n: conversations(n, bob), reader)
    assert (bob, 1) in conversations(reader, alice)  # alice's side stays


# --- valid cases: webhooks ------------------------------------------------------------------


@covers("POST /message/event", "POST /message/eventsync")
def test_stream_events_reach_sessions_on_other_nodes_and_page_the_same_everywhere(
    suite: Suite,
) -> None:
    bot, viewer = new_users(suite, 2)
    gid, writer, reader = new_group(suite, [bot, viewer])
    host, port = suite.cluster.tcp(reader.id)
    cmn = fresh("answer-")
    anchor = {"channel_id": gid, "channel_type": 2, "from_uid": bot, "client_msg_no": cmn}
    frames: list[Event] = []

    async def main() -> None:
        async with open_client(host, port, uid=viewer, token=f"tok-{viewer}", version=5) as c:
            send(writer, bot, gid, "...", client_msg_no=cmn, is_stream=1)
            assert (await c.recv()).client_msg_no == cmn
            for n, (etype, payload) in enumerate(
                [
                    ("stream.delta", {"delta": "Hel"}),
                    ("stream.delta", {"delta": "lo"}),
                    ("stream.finish", {}),
                ],
                start=1,
            ):
                body = {**anchor, "event_id": f"e{n}", "event_type": etype, "payload": payload}
                assert writer.ok("/message/event", body)["msg_event_seq"] == n
            # A message after the events: the EVENTs were queued on the reader's node before
            # the HTTP answers came back, so they precede its RECV.
            send(writer, bot, gid, "after")
            assert text_of_recv(await c.recv()) == "after"
            frames.extend(f for f in c.other_frames if isinstance(f, Event))

    trio.run(main)
    assert [(f.id, f.type) for f in frames] == [
        ("e1", "stream.delta"),
        ("e2", "stream.delta"),
        ("e3", "stream.finish"),
    ]
    page = suite.everywhere(
        lambda n: n.ok("/message/eventsync", {**anchor, "login_uid": viewer}), first=reader
    )
    assert [e["msg_event_seq"] for e in page["events"]] == [1, 2, 3]
    (lane,) = page["event_meta"]["lanes"]
    assert (lane["snapshot"], lane["stream_status"]) == ("Hello", "finished")


def text_of_recv(message: Any) -> str:
    return bytes(message.payload).decode()


@covers("GET /webhook/status")
def test_webhook_status_counts_deliveries_on_the_sending_node(suite: Suite) -> None:
    def sent_items() -> int:
        total = 0
        for node in suite.nodes.values():
            status = node.ok_get("/webhook/status")
            assert status["enabled"] is True and status["url"] == suite.receiver.url
            total += status["events"]["msg.notify"]["sent_items"]
        return total

    before = sent_items()
    alice, bob = new_users(suite, 2)
    gid, writer, _ = new_group(suite, [alice, bob])
    sent = send(writer, alice, gid, "hooked")
    suite.receiver.wait_for(
        lambda hits: any(
            m["message_id"] == sent["message_id"]
            for h in hits
            if h.event == "msg.notify"
            for m in h.body
        )
    )
    # The receiver records a POST before answering it; the sender counts it once answered.
    eventually(lambda: sent_items() > before, what="the sender counting the delivery")


# --- bad input ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    route: str
    """``METHOD /path`` of the route under test."""
    data: Any
    """The POST body, or the GET query."""
    names: str
    """What ``msg`` must contain: the field (or, for a wrong method, the method)."""
    status: int = 400
    wrong_method: bool = False
    """Send POST to this GET route (routes that take no input)."""


def wrong_method(route: str) -> Bad:
    return Bad(route, {}, "POST", status=405, wrong_method=True)


G = {"channel_id": "g", "channel_type": 2}
"""A well-formed group channel for bodies whose other fields are under test."""
P = {"channel_id": "bob", "channel_type": 1}

BAD: list[Bad] = [
    *(
        wrong_method(f"GET {path}")
        for path in (
            "/health",
            "/route",
            "/cluster/status",
            "/cluster/digest",
            "/user/systemuids",
            "/webhook/status",
            "/healthz",
            "/readyz",
            "/metrics",
        )
    ),
    Bad("GET /connz", {"sort": "cpu"}, "sort"),
    Bad("GET /connz", {"limit": "x"}, "limit"),
    Bad("GET /connz", {"node_id": "9"}, "node 9"),
    Bad("GET /varz", {"show": "conn", "conn_limit": "-1"}, "conn_limit"),
    Bad("POST /route/batch", {"uids": ["a"]}, "array"),
    Bad("POST /route/batch", ["a b"], "uid"),
    Bad("POST /cluster/join", {"node_id": 2}, "host"),
    Bad("POST /cluster/join", {"node_id": "2", "host": "h"}, "node_id"),
    Bad("POST /cluster/join", {"node_id": 0, "host": "h"}, "node_id"),
    Bad("POST /cluster/backup/checkpoint", {}, "group"),
    Bad("POST /cluster/backup/checkpoint", {"group": 99}, "group"),
    Bad("POST /cluster/backup/checkpoint", {"group": "1"}, "group"),
    Bad("GET /cluster/backup/file", {"id": "../../etc", "name": "CURRENT"}, "id"),
    Bad("GET /cluster/backup/file", {"id": "0" * 32, "name": "CURRENT", "offset": "-1"}, "offset"),
    Bad("GET /cluster/backup/file", {"id": "0" * 32, "name": "CURRENT"}, "no backup", 404),
    Bad("POST /cluster/backup/release", {}, "id"),
    Bad("POST /cluster/backup/release", {"id": "../x"}, "id"),
    Bad("POST /cluster/leave", {}, "node_id"),
    Bad("POST /cluster/leave", {"node_id": 1, "force": 2}, "force"),
    Bad("POST /user/token", {"token": "t"}, "uid"),
    Bad("POST /user/token", {"uid": "a", "token": "t", "device_flag": 7}, "device_flag"),
    Bad("POST /user/token", {"uid": "a", "token": "t", "device_level": "1"}, "device_level"),
    Bad("POST /user/device_quit", {}, "uid"),
    Bad("POST /user/device_quit", {"uid": "a", "device_flag": "1"}, "device_flag"),
    Bad("POST /user/onlinestatus", {"uid": "a"}, "uids"),
    Bad("POST /user/onlinestatus", ["a", 1], "uids"),
    Bad("POST /user/systemuids_add", {}, "uids"),
    Bad("POST /user/systemuids_add", {"uids": "bot"}, "uids"),
    Bad("POST /user/systemuids_remove", {"uids": ["a b"]}, "uids"),
    Bad("POST /channel", {"channel_type": 2}, "channel_id"),
    Bad("POST /channel", {"channel_id": "g", "channel_type": 99}, "channel_type"),
    Bad("POST /channel", {**G, "subscribers": "a"}, "subscribers"),
    Bad("POST /channel/info", {"channel_id": "g"}, "channel_type"),
    Bad("POST /channel/info", {**G, "ban": 2}, "ban"),
    Bad("GET /channel/info", {"channel_id": "g"}, "channel_type"),
    Bad("GET /channel/info", {"channel_type": 2}, "channel_id"),
    Bad("GET /channel/subscribers", {"channel_id": "g", "channel_type": "x"}, "channel_type"),
    Bad("GET /channel/subscribers", {"channel_id": "a@b", "channel_type": 2}, "channel_id"),
    Bad("POST /channel/subscriber_add", G, "subscribers"),
    Bad("POST /channel/subscriber_add", {**G, "subscribers": [1]}, "subscribers"),
    Bad("POST /channel/subscriber_remove", {**G, "subscribers": "a"}, "subscribers"),
    Bad("POST /channel/subscriber_remove_all", {"channel_type": 2}, "channel_id"),
    Bad("POST /channel/subscriber_remove_all", {"channel_id": "g"}, "channel_type"),
    Bad("POST /channel/delete", {"channel_id": "g", "channel_type": "2"}, "channel_type"),
    Bad("POST /channel/delete", {"channel_type": 2}, "channel_id"),
    *(
        case
        for kind in ("blacklist", "whitelist")
        for case in (
            Bad(f"POST /channel/{kind}_add", G, "uids"),
            Bad(f"POST /channel/{kind}_add", {**G, "uids": ["a@b"]}, "uids"),
            Bad(f"POST /channel/{kind}_set", {**G, "uids": "a"}, "uids"),
            Bad(f"POST /channel/{kind}_remove", G, "uids"),
            Bad(f"POST /channel/{kind}_remove_all", {"channel_type": 2}, "channel_id"),
            Bad(f"GET /channel/{kind}", {"channel_id": "g", "channel_type": 99}, "channel_type"),
            Bad(f"GET /channel/{kind}", {"channel_type": 2}, "channel_id"),
        )
    ),
    Bad("POST /message/send", {**G, "from_uid": "a"}, "payload"),
    Bad("POST /message/send", {"channel_id": "g", "payload": "aGk="}, "channel_type"),
    Bad("POST /message/send", {**G, "payload": "aGk=", "from_uid": 7}, "from_uid"),
    Bad("POST /message/send", {**G, "payload": "aGk=", "header": {"red_dot": 2}}, "red_dot"),
    Bad("POST /message/import", G, "messages"),
    Bad(
        "POST /message/import",
        {**G, "messages": [{"from_uid": "a", "client_msg_no": "c", "payload": "aGk="}]},
        "timestamp",
    ),
    Bad("POST /channel/messagesync", G, "login_uid"),
    Bad("POST /channel/messagesync", {**G, "login_uid": "a", "limit": 0}, "limit"),
    Bad("POST /channel/messagesync", {**G, "login_uid": "a", "pull_mode": 3}, "pull_mode"),
    Bad("GET /channel/max_message_seq", {"channel_id": "g", "channel_type": "x"}, "channel_type"),
    Bad("GET /channel/max_message_seq", {"channel_type": 2}, "channel_id"),
    Bad("POST /message/sendbatch", {"subscribers": ["a"], "payload": "aGk="}, "from_uid"),
    Bad(
        "POST /message/sendbatch",
        {"from_uid": "n", "subscribers": [], "payload": "aGk="},
        "subscribers",
    ),
    Bad("POST /message/sendbatch", {"from_uid": "n", "subscribers": ["a"]}, "payload"),
    Bad("POST /message/sync", {}, "uid"),
    Bad("POST /message/sync", {"uid": "u", "limit": 0}, "limit"),
    Bad("POST /message/sync", {"uid": "u", "device_flag": 7}, "device_flag"),
    Bad("POST /message/syncack", {"uid": "u"}, "last_message_seq"),
    Bad("POST /message/syncack", {"uid": "u", "last_message_seq": 1}, "last_message_seq"),
    Bad("POST /messages", {}, "message_ids"),
    Bad("POST /messages", {"message_ids": ["x"]}, "message_ids"),
    Bad("POST /messages", {"message_ids": [1], "login_uid": "a b"}, "login_uid"),
    Bad("POST /message", {}, "message_id"),
    Bad("POST /message", {"message_id": -1}, "message_id"),
    Bad("GET /message/byclientmsgno", {**G, "from_uid": "a"}, "client_msg_no"),
    Bad("GET /message/byclientmsgno", {**G, "client_msg_no": "c"}, "from_uid"),
    Bad("GET /message/byclientmsgno", {"channel_id": "g", "channel_type": 0}, "channel_type"),
    Bad("GET /channel/last_message", P, "login_uid"),
    Bad("GET /channel/last_message", {"channel_id": "g"}, "channel_type"),
    Bad("POST /message/revoke", {**G, "from_uid": "a"}, "message_seq"),
    Bad("POST /message/revoke", {**G, "message_seq": 1}, "from_uid"),
    Bad("POST /message/revoke", {**G, "from_uid": "a", "message_id": "x"}, "message_id"),
    Bad("POST /message/edit", {**G, "from_uid": "a", "message_seq": 1, "payload": "%%"}, "payload"),
    Bad("POST /message/edit", {**G, "from_uid": "a", "payload": "aGk="}, "message_seq"),
    Bad("POST /message/delete", {**G, "uid": "a", "message_seqs": []}, "message_seqs"),
    Bad("POST /message/delete", {**G, "message_seqs": [1]}, "uid"),
    Bad("POST /message/readed", {**G, "uid": "a"}, "message_seqs"),
    Bad("POST /message/readed", {**G, "uid": "a", "message_seqs": [0]}, "message_seqs"),
    Bad("GET /message/receipt", {**G, "message_seq": "x"}, "message_seq"),
    Bad("GET /message/receipt", G, "message_seq"),
    Bad("GET /message/receipt", {**G, "message_seq": str(2**64)}, "message_seq"),
    Bad("GET /message/receipt", {**P, "message_seq": 1}, "login_uid"),
    Bad("POST /channel/retention", {**G, "retention_days": "7"}, "retention_days"),
    Bad("POST /channel/retention", {"channel_type": 2, "retention_days": 7}, "channel_id"),
    Bad("POST /channel/messages_delete", G, "max_message_seq"),
    Bad("POST /channel/messages_delete", {**G, "max_message_seq": 0}, "max_message_seq"),
    Bad("POST /conversation/sync", {}, "uid"),
    Bad("POST /conversation/sync", {"uid": "u", "last_msg_seqs": "x"}, "last_msg_seqs"),
    Bad("POST /conversation/sync", {"uid": "u", "page_size": 0}, "page_size"),
    Bad("POST /cluster/drain", {"node_id": "1"}, "node_id"),
    Bad("POST /cluster/drain", {}, "node_id"),
    Bad("POST /conversations/clearUnread", G, "uid"),
    Bad("POST /conversations/clearUnread", {**G, "uid": "u", "message_seq": -1}, "message_seq"),
    Bad("POST /conversations/clearUnread", {**G, "uid": "u", "message_seq": 10**30}, "message_seq"),
    Bad("POST /conversations/setUnread", {**G, "uid": "u"}, "unread"),
    Bad("POST /conversations/setUnread", {**G, "uid": "u", "unread": "5"}, "unread"),
    Bad(
        "POST /conversations/delete",
        {"uid": "u", "channel_id": "g", "channel_type": 9},
        "channel_type",
    ),
    Bad("POST /conversations/delete", {"uid": "u", "channel_type": 2}, "channel_id"),
    Bad("POST /conversations/clearMessages", {**G, "uid": "u", "message_seq": "1"}, "message_seq"),
    Bad(
        "GET /conversations/peerRead",
        {"uid": "a", "channel_id": "b", "channel_type": 2},
        "channel_type",
    ),
    Bad("GET /conversations/peerRead", {"channel_id": "b"}, "uid"),
    Bad(
        "POST /message/event",
        {**G, "client_msg_no": "c", "event_type": "stream.delta", "payload": {"delta": "x"}},
        "event_id",
    ),
    Bad("POST /message/event", {**G, "client_msg_no": "c", "event_id": "e"}, "event_type"),
    Bad("POST /message/eventsync", G, "client_msg_no"),
    Bad("POST /message/eventsync", {**G, "client_msg_no": "c", "limit": 0}, "limit"),
]


@pytest.mark.parametrize(
    ("index", "case"), list(enumerate(BAD)), ids=[f"{c.route} {c.names}" for c in BAD]
)
def test_bad_input_is_refused_naming_the_field(suite: Suite, index: int, case: Bad) -> None:
    node = suite.nodes[1 + index % 3]
    method, path = case.route.split(" ", 1)
    if case.wrong_method:
        resp = node.post(path, case.data)
    elif method == "GET":
        resp = node.get(path, **case.data)
    else:
        resp = node.post(path, case.data)
    assert resp.status_code == case.status, resp.text
    body = resp.json()
    assert body["status"] == case.status and case.names in body["msg"], body


def test_every_post_route_refuses_a_body_that_is_not_json(suite: Suite) -> None:
    posts = sorted(r.split(" ", 1)[1] for r in registered_routes() if r.startswith("POST "))
    for i, path in enumerate(posts):
        node = suite.nodes[1 + i % 3]
        resp = node.api.http.post(path, content=b'{"uid": ')
        assert resp.status_code == 400, (path, resp.text)
        assert "not valid JSON" in resp.json()["msg"], (path, resp.text)
        resp = node.api.http.post(path, content=b"")
        assert resp.status_code == 400 and "body is empty" in resp.json()["msg"], (path, resp.text)
