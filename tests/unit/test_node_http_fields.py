"""Typed JSON body fields (400s that name the field) and Router dispatch."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio

from node.http.fields import get_flag, get_int, get_str, get_str_list
from node.http.server import ApiError, Request, Response, Router

# --- fields ---------------------------------------------------------------------------------


def bad(fn: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(ApiError) as info:
        fn(*args, **kw)
    assert info.value.status == 400
    return info.value.msg


def test_get_str() -> None:
    assert get_str({"uid": "u1"}, "uid") == "u1"
    assert get_str({}, "uid") == ""
    assert get_str({}, "uid", default="d") == "d"
    assert get_str({"uid": None}, "uid", default="d") == "d"
    assert get_str({"uid": ""}, "uid") == ""  # empty is fine unless required
    assert "uid" in bad(get_str, {}, "uid", required=True)
    assert "uid" in bad(get_str, {"uid": None}, "uid", required=True)
    assert "uid" in bad(get_str, {"uid": ""}, "uid", required=True)


@pytest.mark.parametrize("value", [5, 1.5, True, ["u1"], {"a": 1}])
def test_get_str_wrong_type(value: Any) -> None:
    msg = bad(get_str, {"token": value}, "token")
    assert "token" in msg and "string" in msg


def test_get_int() -> None:
    assert get_int({"n": 3}, "n") == 3
    assert get_int({"n": -3}, "n") == -3
    assert get_int({}, "n") == 0
    assert get_int({}, "n", default=7) == 7
    assert get_int({"n": None}, "n", default=7) == 7
    assert get_int({"n": 2**40}, "n") == 2**40
    assert "n is required" in bad(get_int, {}, "n", required=True)


@pytest.mark.parametrize("value", ["1", 1.0, 1.5, True, False, [1]])
def test_get_int_wrong_type(value: Any) -> None:
    msg = bad(get_int, {"channel_type": value}, "channel_type")
    assert "channel_type" in msg and "integer" in msg


def test_get_int_choices_and_range() -> None:
    assert get_int({"f": 1}, "f", choices={0, 1, 2}) == 1
    msg = bad(get_int, {"f": 5}, "f", choices={2, 0, 1})
    assert "f" in msg and "[0, 1, 2]" in msg and "5" in msg
    assert get_int({"e": 0}, "e", minimum=0, maximum=10) == 0
    assert get_int({"e": 10}, "e", minimum=0, maximum=10) == 10
    msg = bad(get_int, {"e": -1}, "e", minimum=0)
    assert "e" in msg and "at least 0" in msg
    msg = bad(get_int, {"expire": 2**32}, "expire", maximum=0xFFFFFFFF)
    assert "expire" in msg and "at most" in msg
    # the default is not range-checked against choices (absent means "use the default")
    assert get_int({}, "f", default=-1, choices={0, 1}) == -1


def test_get_flag() -> None:
    assert get_flag({}, "ban") is None
    assert get_flag({"ban": None}, "ban") is None
    assert get_flag({"ban": 1}, "ban") is True
    assert get_flag({"ban": 0}, "ban") is False
    assert get_flag({"ban": True}, "ban") is True
    assert get_flag({"ban": False}, "ban") is False


@pytest.mark.parametrize("value", [2, -1, "1", "true", [1], {}])
def test_get_flag_wrong_values(value: Any) -> None:
    msg = bad(get_flag, {"ban": value}, "ban")
    assert "ban" in msg and "0 or 1" in msg


def test_get_str_list() -> None:
    assert get_str_list({"subscribers": ["u1", "u2"]}, "subscribers") == ["u1", "u2"]
    assert get_str_list({"subscribers": []}, "subscribers") == []
    assert get_str_list({}, "subscribers") == []
    assert get_str_list({"subscribers": None}, "subscribers") == []
    assert "subscribers is required" in bad(get_str_list, {}, "subscribers", required=True)


@pytest.mark.parametrize("value", ["u1", ["u1", 2], [None], {"u1": 1}, 5])
def test_get_str_list_wrong_type(value: Any) -> None:
    msg = bad(get_str_list, {"uids": value}, "uids")
    assert "uids" in msg and "list of strings" in msg


# --- Request --------------------------------------------------------------------------------


def request(method: str = "POST", path: str = "/x", body: bytes = b"{}") -> Request:
    return Request(method=method, path=path, query={}, headers={}, body=body)


def test_request_json() -> None:
    assert request(body=b'{"a": [1]}').json_object() == {"a": [1]}
    assert request(body=b"[1]").json() == [1]
    for raw in (b"", b"  \n", b"{nope", b"\xff\xfe"):
        with pytest.raises(ApiError) as info:
            request(body=raw).json()
        assert info.value.status == 400
    with pytest.raises(ApiError, match="JSON object"):
        request(body=b"[1, 2]").json_object()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"uid": "\\ud800"}',  # an escape of a lone high surrogate
        b'{"uid": "a\\udfffb"}',  # a lone low surrogate inside a string
        b'{"\\ud800": 1}',  # in a key
        b'{"uids": ["ok", ["\\udc00"]]}',  # deep in a list
        '{"uid": "\ud800"}'.encode("utf-8", "surrogatepass"),  # encoded as UTF-8 bytes
    ],
)
def test_a_lone_surrogate_anywhere_in_a_body_is_a_400(raw: bytes) -> None:
    # Such a string has no UTF-8 form: handlers that check, hash or store it raised (a 500).
    with pytest.raises(ApiError) as info:
        request(body=raw).json()
    assert info.value.status == 400 and "lone surrogate" in info.value.msg


def test_paired_surrogates_and_other_text_are_fine() -> None:
    body = '{"uid": "\\ud83d\\ude00", "name": "李雷 é"}'.encode()
    assert request(body=body).json() == {"uid": "\U0001f600", "name": "李雷 é"}


# --- Router ---------------------------------------------------------------------------------


def dispatch(router: Router, req: Request) -> Response:
    async def main() -> Response:
        return await router.dispatch(req)

    return trio.run(main)


def make_router() -> Router:
    router = Router()

    @router.route("POST", "/ok")
    async def ok(req: Request) -> Response:
        return Response(200, {"echo": req.json_object()})

    @router.route("get", "/items")
    async def items(req: Request) -> Response:
        return Response(200, [1, 2])

    @router.route("POST", "/refuse")
    async def refuse(req: Request) -> Response:
        raise ApiError(403, "send refused: BAN", reason=19)

    @router.route("POST", "/fields")
    async def fields(req: Request) -> Response:
        get_int(req.json_object(), "channel_type", required=True)
        return Response()

    @router.route("POST", "/boom")
    async def boom(req: Request) -> Response:
        raise RuntimeError("secret-db-path /var/lib/raftchat token=abc123")

    return router


def test_dispatch_to_the_handler() -> None:
    router = make_router()
    resp = dispatch(router, request("POST", "/ok", b'{"a": 1}'))
    assert (resp.status, resp.body) == (200, {"echo": {"a": 1}})
    # route() upper-cases the method it registers
    assert dispatch(router, request("GET", "/items", b"")).body == [1, 2]
    assert ("GET", "/items") in router.paths()


def test_unknown_path_is_404() -> None:
    resp = dispatch(make_router(), request("POST", "/nope"))
    assert resp.status == 404
    assert resp.body["status"] == 404
    assert "/nope" in resp.body["msg"]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/ok"), ("DELETE", "/ok"), ("POST", "/items")]
)
def test_wrong_method_is_405(method: str, path: str) -> None:
    resp = dispatch(make_router(), request(method, path))
    assert resp.status == 405
    assert resp.body["status"] == 405
    assert method in resp.body["msg"]


def test_api_error_becomes_its_status_and_envelope() -> None:
    resp = dispatch(make_router(), request("POST", "/refuse"))
    assert resp.status == 403
    assert resp.body == {"msg": "send refused: BAN", "status": 403, "reason": 19}


def test_field_error_is_a_400_naming_the_field() -> None:
    router = make_router()
    resp = dispatch(router, request("POST", "/fields", b'{"channel_type": "2"}'))
    assert resp.status == 400
    assert resp.body["status"] == 400
    assert "channel_type" in resp.body["msg"]
    resp = dispatch(router, request("POST", "/fields", b"not json"))
    assert resp.status == 400 and "JSON" in resp.body["msg"]
    assert json.loads(resp.encode()) == resp.body


def test_unexpected_exception_is_500_without_leaking(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # setup_logging() turns propagation off; make sure caplog sees the record regardless
    monkeypatch.setattr(logging.getLogger("raftchat"), "propagate", True)
    with caplog.at_level(logging.ERROR, logger="raftchat.http"):
        resp = dispatch(make_router(), request("POST", "/boom"))
    assert resp.status == 500
    assert resp.body == {"msg": "internal error", "status": 500}
    wire = resp.encode().decode()
    for secret in ("secret", "abc123", "RuntimeError", "/var/lib"):
        assert secret not in wire
    # the operator still gets the details in the log
    assert any(r.exc_info and "secret-db-path" in str(r.exc_info[1]) for r in caplog.records)


def test_a_handler_bug_hit_again_and_again_is_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("raftchat"), "propagate", True)
    router = make_router()
    with caplog.at_level(logging.ERROR, logger="raftchat.http"):
        for _ in range(50):
            assert dispatch(router, request("POST", "/boom")).status == 500
    assert len([r for r in caplog.records if r.exc_info]) == 1


def test_hostile_json_is_a_400_not_a_500() -> None:
    router = make_router()
    for body, words in (
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels"),
        (b'{"channel_type": ' + b"1" * 1_000_000 + b"}", "more than 4300 digits"),
    ):
        resp = dispatch(router, request("POST", "/fields", body))
        assert resp.status == 400 and words in resp.body["msg"], resp.body


def test_response_encoding_keeps_unicode() -> None:
    body = Response(200, {"msg": "频道"}).encode()
    assert "频道".encode() in body
    assert Response().encode() == b'{"status":200}'


def test_get_int_refuses_what_64_bits_cannot_hold() -> None:
    """Such values reached struct.pack and protobuf's uint64 fields and came back as 500s."""
    assert get_int({"n": 2**63 - 1}, "n") == 2**63 - 1
    assert get_int({"n": -(2**63)}, "n") == -(2**63)
    for value in (2**63, 2**64, 10**30, -(2**63) - 1):
        with pytest.raises(ApiError) as e:
            get_int({"n": value}, "n")
        assert e.value.status == 400 and "64" in e.value.msg
