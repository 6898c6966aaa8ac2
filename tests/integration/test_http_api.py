"""The HTTP API of the first issue against a real node: valid input, and bad input answered
with 400 and a message that names the problem.

One node serves the module's tests that need no settings of their own: each works on channels
and users no other test of the module touches, and a refused request changes nothing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from client.wkproto import open_client
from launcher.devcluster import NodeProcess
from tests.conftest import ADMIN_TOKEN, Api, eventually, running_node, start_node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    yield from running_node(tmp_path_factory.mktemp("httpapi"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_health_and_route(node: NodeProcess, api: Api) -> None:
    assert api.http.get("/health").json() == {"status": "ok"}
    route = api.http.get("/route").json()
    assert route["tcp_addr"] == node.endpoints["tcp"]
    assert route["ws_addr"] == node.endpoints["ws"]


def test_unknown_route_and_method(api: Api) -> None:
    assert api.http.get("/nope").status_code == 404
    assert api.http.get("/message/send").status_code == 405


@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/user/token", {"token": "t"}, "uid"),
        ("/user/token", {"uid": "a@b", "token": "t"}, "uid"),
        ("/user/token", {"uid": "a", "token": ""}, "token"),
        ("/user/token", {"uid": "a", "token": "t", "device_flag": 7}, "device_flag"),
        ("/user/token", {"uid": "a", "token": "t", "device_level": "1"}, "device_level"),
        ("/user/device_quit", {"uid": ""}, "uid"),
        ("/channel", {"channel_type": 2}, "channel_id"),
        ("/channel", {"channel_id": "g", "channel_type": 99}, "channel_type"),
        ("/channel", {"channel_id": "g", "channel_type": 2, "subscribers": "a"}, "subscribers"),
        ("/channel", {"channel_id": "u", "channel_type": 1, "subscribers": ["a"]}, "person"),
        ("/channel", {"channel_id": "g", "channel_type": 2, "ban": 2}, "ban"),
        ("/channel/subscriber_add", {"channel_id": "g", "channel_type": 2}, "subscribers"),
        ("/message/send", {"channel_id": "g", "channel_type": 2}, "payload"),
        ("/message/send", {"channel_id": "g", "channel_type": 2, "payload": "%%"}, "base64"),
        ("/message/send", {"channel_id": "g", "payload": "aGk="}, "channel_type"),
        ("/message/send", {"channel_id": "g", "channel_type": 13, "payload": "aGk="}, "13"),
        ("/message/send", {"channel_id": "b", "channel_type": 1, "payload": "aGk="}, "from_uid"),
        (
            "/message/send",
            {"from_uid": "a", "channel_id": "x@y", "channel_type": 1, "payload": "aGk="},
            "party",
        ),
        (
            "/message/send",
            {
                "from_uid": "a",
                "channel_id": "g",
                "channel_type": 2,
                "payload": "aGk=",
                "expire": -1,
            },
            "expire",
        ),
        (
            "/message/send",
            {
                "from_uid": "a",
                "channel_id": "b",
                "channel_type": 1,
                "payload": "aGk=",
                "client_msg_no": "x" * 70_000,
            },
            "client_msg_no",
        ),
        (
            "/message/send",
            {
                "from_uid": "a",
                "channel_id": "a@" + "y" * 70_000,
                "channel_type": 1,
                "payload": "aGk=",
            },
            "longer",
        ),
    ],
)
def test_bad_input_is_400_naming_the_problem(api: Api, path: str, body: object, names: str) -> None:
    resp = api.post(path, body)
    assert resp.status_code == 400, resp.text
    data = resp.json()
    assert data["status"] == 400 and names in data["msg"], data


def test_malformed_bodies(api: Api) -> None:
    for raw in (b"", b"{not json", b"[1,2]"):
        resp = api.http.post("/user/token", content=raw)
        assert resp.status_code == 400 and resp.json()["msg"], raw
    resp = api.http.post("/user/onlinestatus", content=b'{"uid":"a"}')
    assert resp.status_code == 400 and "list" in resp.json()["msg"]


def test_oversized_body_is_413(api: Api) -> None:
    resp = api.http.post("/message/send", content=b"x" * (3 * 1024 * 1024))
    assert resp.status_code == 413


def test_message_send_is_synchronous_and_deduplicated(node: NodeProcess, api: Api) -> None:
    api.token("alice", "ta")
    api.token("bob", "tb")
    api.ok("/channel", {"channel_id": "team", "channel_type": 2, "subscribers": ["alice", "bob"]})
    host, port = node.endpoints["tcp"].rsplit(":", 1)
    sent: dict[str, object] = {}

    async def main() -> None:
        async with open_client(host, int(port), uid="bob", token="tb") as bob:
            body = {
                "from_uid": "alice",
                "channel_id": "team",
                "channel_type": 2,
                "payload": b64(b'{"type":1,"content":"standup"}'),
                "client_msg_no": "api-1",
                "header": {"red_dot": 1},
            }
            async with httpx.AsyncClient(base_url=node.endpoints["http"]) as http:
                first = (await http.post("/message/send", json=body)).json()
                again = (await http.post("/message/send", json=body)).json()
            assert first == again
            assert first["message_seq"] == 1 and first["client_msg_no"] == "api-1"
            assert first["message_idstr"] == str(first["message_id"])
            msg = await bob.recv()
            assert (msg.message_id, msg.message_seq) == (first["message_id"], 1)
            assert msg.from_uid == "alice" and msg.payload == b'{"type":1,"content":"standup"}'
            assert msg.flags & 0x02  # red dot carried
            sent.update(first)

    trio.run(main)
    # A person message through the API, from alice's point of view to bob.
    person = api.ok(
        "/message/send",
        {"from_uid": "alice", "channel_id": "bob", "channel_type": 1, "payload": b64(b"hey")},
    )
    assert person["message_seq"] == 1 and person["client_msg_no"]


def test_message_send_refusals(api: Api) -> None:
    resp = api.post(
        "/message/send",
        {"from_uid": "a", "channel_id": "ghost", "channel_type": 2, "payload": "aGk="},
    )
    assert resp.status_code == 404 and resp.json()["reason"] == 5
    api.ok("/channel", {"channel_id": "frozen", "channel_type": 2, "subscribers": ["a"], "ban": 1})
    resp = api.post(
        "/message/send",
        {"from_uid": "a", "channel_id": "frozen", "channel_type": 2, "payload": "aGk="},
    )
    assert resp.status_code == 403 and resp.json()["reason"] == 19


def test_channel_subscribers_reset_and_remove(node: NodeProcess, api: Api) -> None:
    api.token("carol", "tc")
    api.ok("/channel", {"channel_id": "club", "channel_type": 2, "subscribers": ["carol", "dave"]})
    api.ok(
        "/channel/subscriber_remove",
        {"channel_id": "club", "channel_type": 2, "subscribers": ["carol"]},
    )
    host, port = node.endpoints["tcp"].rsplit(":", 1)

    async def main() -> None:
        async with open_client(host, int(port), uid="carol", token="tc") as carol:
            assert (await carol.send("club", 2, b"x")).reason_code == 3  # no longer a member
            api.ok(
                "/channel/subscriber_add",
                {"channel_id": "club", "channel_type": 2, "subscribers": ["carol"], "reset": 1},
            )
            assert (await carol.send("club", 2, b"y")).ok
            api.ok("/channel/info", {"channel_id": "club", "channel_type": 2, "disband": 1})
            assert (await carol.send("club", 2, b"z")).reason_code == 24

    trio.run(main)


def test_onlinestatus_lists_only_online_users(node: NodeProcess, api: Api) -> None:
    api.token("erin", "te", device_flag=1)
    host, port = node.endpoints["tcp"].rsplit(":", 1)

    async def main() -> None:
        async with open_client(host, int(port), uid="erin", token="te", device_flag=1):
            assert api.ok("/user/onlinestatus", ["erin", "frank"]) == [
                {"uid": "erin", "device_flag": 1, "online": 1}
            ]

    trio.run(main)
    eventually(lambda: api.ok("/user/onlinestatus", ["erin"]) == [], what="erin offline")


def test_leave_that_would_shrink_below_the_replica_count_is_refused(tmp_path: Path) -> None:
    """Found by the chaos suite: repeated leaves took a 5-node cluster down to 2 members, each
    slot group one failure from unavailable. The last member cannot leave (0 < 1 would stay);
    the same rule keeps a 3-node cluster with replicas = 3 at 3 until a replacement joins."""
    node = start_node(tmp_path, auth__admin_token=ADMIN_TOKEN)  # no change without one
    try:
        check_leave_refused(Api.of(node))
    finally:
        node.stop()


def check_leave_refused(api: Api) -> None:
    resp = api.post("/cluster/leave", {"node_id": 1})
    assert resp.status_code == 409
    assert "cluster.replicas" in resp.json()["msg"]
    assert api.post("/cluster/leave", {"node_id": 1, "force": 2}).status_code == 400
    assert "1" in api.http.get("/cluster/status").json()["nodes"]  # still a member


def test_a_change_too_large_for_one_raft_entry_is_refused_with_413(tmp_path: Path) -> None:
    """With a body limit raised past what one Raft entry may hold, the node refuses the change
    instead of proposing an entry that pysyncobj would split into chunks."""
    node = start_node(tmp_path, http__max_body_bytes=16 * 1024 * 1024)
    try:
        api = Api(node.endpoints["http"])
        api.ok("/channel", {"channel_id": "huge", "channel_type": 2})
        uids = [f"member-{i:06d}-{'x' * 40}" for i in range(80_000)]  # ~4.4 MB of uids
        resp = api.post(
            "/channel/subscriber_add",
            {"channel_id": "huge", "channel_type": 2, "subscribers": uids},
        )
        assert resp.status_code == 413, resp.text
        assert "split it" in resp.json()["msg"]
        half = {"channel_id": "huge", "channel_type": 2, "subscribers": uids[:20_000]}
        api.ok("/channel/subscriber_add", half)
        got = api.http.get("/channel/subscribers", params={"channel_id": "huge", "channel_type": 2})
        assert len(got.json()) == 20_000
    finally:
        node.stop()
