"""Channel deny/allow lists, channel deletion and system uids through the HTTP API of one real
node (shared by the module's tests; every test uses its own channel and uid names)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from launcher.devcluster import NodeProcess
from tests.conftest import Api, start_node

_names = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    proc: NodeProcess = start_node(tmp_path_factory.mktemp("lists"))
    client = Api(proc.endpoints["http"])
    try:
        yield client
    finally:
        client.http.close()
        proc.stop()


def get_list(api: Api, name: str, cid: str, ctype: int) -> list[str]:
    resp = api.http.get(f"/channel/{name}", params={"channel_id": cid, "channel_type": ctype})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert isinstance(body, list)
    return sorted(body)


@pytest.mark.parametrize("name", ["blacklist", "whitelist"])
def test_list_add_set_remove_remove_all(api: Api, name: str) -> None:
    g = fresh("g")
    body = {"channel_id": g, "channel_type": 2}
    api.ok(f"/channel/{name}_add", {**body, "uids": ["a", "b"]})
    api.ok(f"/channel/{name}_add", {**body, "uids": ["c"]})
    assert get_list(api, name, g, 2) == ["a", "b", "c"]
    api.ok(f"/channel/{name}_remove", {**body, "uids": ["b"]})
    assert get_list(api, name, g, 2) == ["a", "c"]
    api.ok(f"/channel/{name}_set", {**body, "uids": ["c", "d"]})
    assert get_list(api, name, g, 2) == ["c", "d"]
    api.ok(f"/channel/{name}_remove_all", body)
    assert get_list(api, name, g, 2) == []


def test_lists_are_separate_per_kind_and_channel(api: Api) -> None:
    g, owner = fresh("g"), fresh("owner")
    api.ok("/channel/blacklist_add", {"channel_id": g, "channel_type": 2, "uids": ["x"]})
    api.ok("/channel/whitelist_add", {"channel_id": g, "channel_type": 2, "uids": ["y"]})
    api.ok("/channel/blacklist_add", {"channel_id": owner, "channel_type": 1, "uids": ["z"]})
    assert get_list(api, "blacklist", g, 2) == ["x"]
    assert get_list(api, "whitelist", g, 2) == ["y"]
    assert get_list(api, "blacklist", owner, 1) == ["z"]
    assert get_list(api, "blacklist", g, 3) == []


@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/channel/blacklist_add", {"channel_id": "g", "channel_type": 2}, "uids"),
        ("/channel/blacklist_add", {"channel_id": "g", "channel_type": 2, "uids": "a"}, "uids"),
        ("/channel/whitelist_add", {"channel_id": "g", "channel_type": 2, "uids": ["a@b"]}, "uids"),
        ("/channel/whitelist_set", {"channel_id": "g", "channel_type": 0, "uids": []}, "type"),
        ("/channel/blacklist_remove", {"channel_type": 2, "uids": ["a"]}, "channel_id"),
        ("/channel/subscriber_remove_all", {"channel_id": "u", "channel_type": 1}, "person"),
        ("/channel/delete", {"channel_id": "", "channel_type": 2}, "channel_id"),
        ("/user/systemuids_add", {"uids": [1]}, "uids"),
        ("/user/systemuids_remove", {}, "uids"),
    ],
)
def test_bad_input_is_400_naming_the_problem(
    api: Api, path: str, body: dict[str, object], names: str
) -> None:
    resp = api.post(path, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["status"] == 400 and names in resp.json()["msg"]


def test_get_list_with_bad_query_is_400(api: Api) -> None:
    resp = api.http.get("/channel/blacklist", params={"channel_id": "g", "channel_type": "x"})
    assert resp.status_code == 400 and "channel_type" in resp.json()["msg"]
    resp = api.http.get("/channel/whitelist", params={"channel_type": 2})
    assert resp.status_code == 400 and "channel_id" in resp.json()["msg"]


def test_subscriber_remove_all(api: Api) -> None:
    g = fresh("g")
    api.ok("/channel", {"channel_id": g, "channel_type": 2, "subscribers": ["a", "b"]})
    api.ok("/channel/subscriber_remove_all", {"channel_id": g, "channel_type": 2})
    resp = api.post(
        "/message/send", {"from_uid": "a", "channel_id": g, "channel_type": 2, "payload": "aGk="}
    )
    # a trusted send still reaches the (now empty) channel; a client send would be refused
    assert resp.status_code == 200
    resp = api.post("/channel/subscriber_remove_all", {"channel_id": fresh("g"), "channel_type": 2})
    assert resp.status_code == 404


def test_channel_delete_keeps_history_and_forgets_metadata(api: Api) -> None:
    g = fresh("g")
    api.ok("/channel", {"channel_id": g, "channel_type": 2, "subscribers": ["a"]})
    api.ok("/channel/blacklist_add", {"channel_id": g, "channel_type": 2, "uids": ["x"]})
    send = {"from_uid": "a", "channel_id": g, "channel_type": 2, "payload": "aGk="}
    assert api.ok("/message/send", send)["message_seq"] == 1
    api.ok("/channel/delete", {"channel_id": g, "channel_type": 2})
    # later sends behave as for a channel that never existed
    resp = api.post("/message/send", send)
    assert resp.status_code == 404 and resp.json()["reason"] == 5
    assert get_list(api, "blacklist", g, 2) == []
    page = api.ok(
        "/channel/messagesync", {"login_uid": "a", "channel_id": g, "channel_type": 2, "limit": 10}
    )
    assert [m["message_seq"] for m in page["messages"]] == [1]
    # re-created, it continues after the stored history instead of reusing seq 1
    api.ok("/channel", {"channel_id": g, "channel_type": 2, "subscribers": ["a"]})
    assert api.ok("/message/send", send)["message_seq"] == 2


def test_channel_delete_keeps_members_conversations_up_to_the_deletion(api: Api) -> None:
    g, a, b = fresh("g"), fresh("a"), fresh("b")
    api.ok("/channel", {"channel_id": g, "channel_type": 2, "subscribers": [a, b]})
    send = {"from_uid": a, "channel_id": g, "channel_type": 2, "payload": "aGk="}
    api.ok("/message/send", send)
    api.ok("/channel/delete", {"channel_id": g, "channel_type": 2})

    def unread_of_b() -> list[int]:
        rows = api.ok("/conversation/sync", {"uid": b, "msg_count": 1})
        return [r["unread"] for r in rows if r["channel_id"] == g]

    assert unread_of_b() == [1]  # the conversation and its history stay
    # Re-created without b: its messages are not b's to count.
    api.ok("/channel", {"channel_id": g, "channel_type": 2, "subscribers": [a]})
    api.ok("/message/send", send)
    assert unread_of_b() == [1]


def test_system_uids_add_list_remove(api: Api) -> None:
    uids = [fresh("sys") for _ in range(6)]
    api.ok("/user/systemuids_add", {"uids": uids})
    listed = api.http.get("/user/systemuids").json()
    assert set(uids) <= set(listed)
    api.ok("/user/systemuids_remove", {"uids": uids[:3]})
    listed = api.http.get("/user/systemuids").json()
    assert set(uids[3:]) <= set(listed) and not set(uids[:3]) & set(listed)
