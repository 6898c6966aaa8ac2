"""The HTTP client without a server: request building, answer parsing, error mapping, retries
and failover, over httpx's mock transport."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from client.backoff import Backoff
from client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    NotFound,
    RateLimited,
    Refused,
    Unavailable,
    Unreachable,
)
from client.http import HttpClient, SyncHttpClient
from client.models import ClusterStatus, Message
from proto.wkproto import HeaderFlag, ReasonCode

NO_WAIT = Backoff(0.0, 0.0)

Handler = Callable[[httpx.Request], httpx.Response]


def sync_client(handler: Handler, urls: list[str] | None = None, **kw: Any) -> SyncHttpClient:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return SyncHttpClient(urls or ["http://n1:5001"], http=http, backoff=NO_WAIT, **kw)


def message_json(seq: int, payload: bytes = b"hi", **extra: Any) -> dict[str, Any]:
    return {
        "header": {"no_persist": 0, "red_dot": 1, "sync_once": 0},
        "setting": 0,
        "message_id": 1000 + seq,
        "message_idstr": str(1000 + seq),
        "client_msg_no": f"c-{seq}",
        "message_seq": seq,
        "from_uid": "alice",
        "channel_id": "team",
        "channel_type": 2,
        "topic": "",
        "expire": 0,
        "timestamp": 1795301183,
        "payload": base64.b64encode(payload).decode(),
        **extra,
    }


def test_send_builds_the_documented_body_and_parses_the_answer() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        body = json.loads(req.content)
        return httpx.Response(
            200,
            json={
                "message_id": 7,
                "message_idstr": "7",
                "message_seq": 3,
                "client_msg_no": body["client_msg_no"],
            },
        )

    api = sync_client(handler)
    result = api.send("alice", "team", 2, b"\x00hi", red_dot=False, topic="t")
    body = json.loads(seen[0].content)
    assert seen[0].method == "POST" and seen[0].url.path == "/message/send"
    assert base64.b64decode(body["payload"]) == b"\x00hi"
    assert body["header"] == {"red_dot": 0, "no_persist": 0, "sync_once": 0}
    assert body["topic"] == "t"
    # A client_msg_no is always sent, so that a retry cannot store the message twice.
    assert body["client_msg_no"] and result.client_msg_no == body["client_msg_no"]
    assert (result.message_id, result.message_seq) == (7, 3)


def test_queries_go_in_the_url_and_404_lookups_answer_none() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        assert req.url.params["channel_id"] == "team"
        assert req.url.params["channel_type"] == "2"
        return httpx.Response(404, json={"status": 404})

    api = sync_client(handler)
    assert api.channel_info("team", 2) is None
    assert api.last_message("team", 2, login_uid="bob") is None


def test_message_parsing_decodes_payload_flags_and_operations() -> None:
    m = Message.from_json(
        message_json(
            5,
            b"\xff\xfe",
            header={"no_persist": 0, "red_dot": 1, "sync_once": 1},
            revoke=1,
            revoker="alice",
            edited=2,
        )
    )
    assert m.payload == b"\xff\xfe" and m.text == "\ufffd\ufffd"
    assert m.flags == HeaderFlag.RED_DOT | HeaderFlag.SYNC_ONCE
    assert m.red_dot and m.sync_once and not m.no_persist
    assert (m.revoked, m.revoker, m.edited) == (True, "alice", 2)
    assert m.channel == ("team", 2)
    with pytest.raises(KeyError):
        Message.from_json({"message_seq": 1})


def test_cluster_status_parses_groups_and_node_ids() -> None:
    st = ClusterStatus.from_json(
        {
            "node_id": 2,
            "placement_version": 4,
            "nodes": {"1": "127.0.0.11", "2": "127.0.0.12"},
            "slot_table": [1, 2],
            "groups": [
                {"group": 0, "replicas": [1, 2], "leader": None},
                {"group": 1, "replicas": [1, 2], "leader": 2, "is_leader": True},
            ],
        }
    )
    assert st.nodes == {1: "127.0.0.11", 2: "127.0.0.12"}
    assert st.group(0).leader is None
    assert st.group(1).is_leader and st.group(1).leader == 2


@pytest.mark.parametrize(
    ("status", "body", "cls", "reason"),
    [
        (400, {"msg": "uid is required", "status": 400}, BadRequest, None),
        (403, {"msg": "send refused: Ban", "status": 403, "reason": 19}, Refused, ReasonCode.BAN),
        (404, {"msg": "no channel", "status": 404, "reason": 5}, NotFound, 5),
        (429, {"msg": "slow down", "status": 429, "reason": 22}, RateLimited, 22),
        (418, {"msg": "teapot", "status": 418}, ApiError, None),
    ],
)
def test_error_statuses_map_to_exceptions_with_reason_codes(
    status: int, body: dict[str, Any], cls: type[ApiError], reason: int | None
) -> None:
    api = sync_client(lambda req: httpx.Response(status, json=body))
    with pytest.raises(cls) as info:
        api.send("alice", "team", 2, b"x")
    e = info.value
    assert type(e) is cls
    assert (e.status, e.message, e.reason_code) == (status, body["msg"], reason)
    assert isinstance(e, ClientError)
    if reason is not None:
        assert isinstance(e.reason_code, ReasonCode)


def test_a_503_with_a_leader_reason_is_retried_then_succeeds() -> None:
    answers = [
        httpx.Response(503, json={"msg": "no leader", "status": 503, "reason": 17}),
        httpx.Response(503, json={"msg": "moved", "status": 503, "reason": 18}),
        httpx.Response(200, json={"message_seq": 9}),
    ]
    api = sync_client(lambda req: answers.pop(0))
    assert api.max_message_seq("team", 2) == 9
    assert not answers


def test_503_retries_are_bounded_and_the_last_error_is_raised() -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, json={"msg": "no leader", "status": 503, "reason": 17})

    api = sync_client(handler, retries=2)
    with pytest.raises(Unavailable) as info:
        api.max_message_seq("team", 2)
    assert info.value.reason_code == ReasonCode.NODE_MATCH_ERROR
    assert calls == 3


def test_a_503_that_may_have_committed_is_not_resent_for_a_non_idempotent_call() -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, json={"msg": "unknown", "status": 503, "reason": 18})

    api = sync_client(handler)
    with pytest.raises(Unavailable):
        api.edit("alice", "team", 2, b"new", message_seq=1)
    assert calls == 1


def test_an_unreachable_node_is_left_for_the_next_one_also_for_later_calls() -> None:
    hosts: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        hosts.append(req.url.host)
        if req.url.host == "n1":
            raise httpx.ConnectError("refused", request=req)
        return httpx.Response(200, json={"status": "ok"})

    api = sync_client(handler, ["http://n1:5001", "http://n2:5001"])
    assert api.health()
    assert api.health()
    assert hosts == ["n1", "n2", "n2"]


def test_no_node_answering_raises_unreachable_with_every_error() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    api = sync_client(handler, ["http://n1:5001", "http://n2:5001"], retries=3)
    with pytest.raises(Unreachable) as info:
        api.health()
    assert len(info.value.errors) == 4


def test_a_lost_answer_is_not_resent_unless_the_call_is_idempotent() -> None:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.path)
        if len(calls) == 1:
            raise httpx.ReadTimeout("no answer", request=req)
        return httpx.Response(200, json={"message_id": 1, "message_seq": 1, "version": 2})

    api = sync_client(handler)
    with pytest.raises(Unreachable, match="not safe to resend"):
        api.edit("alice", "team", 2, b"new", message_seq=1)
    calls.clear()
    # A send carries its client_msg_no: resending it is safe.
    assert api.send("alice", "team", 2, b"x").message_seq == 1
    assert calls == ["/message/send", "/message/send"]


def test_an_answer_that_is_not_json_is_a_client_error() -> None:
    api = sync_client(lambda req: httpx.Response(200, content=b"<html>"))
    with pytest.raises(ClientError, match="not JSON"):
        api.max_message_seq("team", 2)


def test_the_trio_client_shares_the_routes_and_the_retries() -> None:
    answers = [
        httpx.Response(503, json={"msg": "no leader", "status": 503, "reason": 17}),
        httpx.Response(
            200,
            json={
                "start_message_seq": 1,
                "more": 1,
                "messages": [message_json(1), message_json(2)],
            },
        ),
        httpx.Response(
            200, json={"start_message_seq": 3, "more": 0, "messages": [message_json(3)]}
        ),
    ]
    bodies: list[dict[str, Any]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(req.content))
        return answers.pop(0)

    async def main() -> list[int]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with HttpClient("http://n1:5001", http=http, backoff=NO_WAIT) as api:
            return [m.message_seq async for m in api.iter_messages("bob", "team", 2, 1)]

    assert trio.run(main) == [1, 2, 3]
    # Paging continues after the last seq of the previous page, reading upwards.
    assert [b["start_message_seq"] for b in bodies] == [1, 1, 3]
    assert {b["pull_mode"] for b in bodies} == {1}
