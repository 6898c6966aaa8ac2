"""The web console's door without a network (``node/console``): sessions, the CSRF header and
Origin check, the allowed routes, and their dispatch into the API's own handlers. The pages
themselves are tested in Chromium against a cluster (tests/integration/test_console.py)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from node.config_sections import AuthSection
from node.console.forward import Forwarder
from node.console.routes import COOKIE, ConsoleContext, build_console_router, cookie_value
from node.console.sessions import SessionStore
from node.http.auth import Credentials
from node.http.server import Request, Response, Router

ADMIN = "the-admin-token"
MARKED = {"x-raftchat-console": "1", "host": "127.0.0.1:5300"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def api_router(seen: list[Request]) -> Router:
    """An API with its own credential check (an API token), and two routes."""
    auth = AuthSection(api_token="the-api-token", admin_token=ADMIN)
    r = Router(Credentials(auth, lambda: True))

    async def connz(req: Request) -> Response:
        seen.append(req)
        return Response(200, {"connections": [], "query": req.query})

    async def drain(req: Request) -> Response:
        seen.append(req)
        return Response(200, {"status": 200, "node_id": req.json_object()["node_id"]})

    r.add("GET", "/connz", connz)
    r.add("POST", "/cluster/drain", drain)
    return r


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def seen() -> list[Request]:
    return []


@pytest.fixture(params=[False], ids=["http"])
def https(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def console(clock: Clock, seen: list[Request], https: bool) -> Any:
    api = api_router(seen)
    assert api.credentials is not None
    forwarder = Forwarder(5001, https, None, ADMIN)
    ctx = ConsoleContext(
        node_id=1,
        api=api,
        credentials=api.credentials,
        members=lambda: {1: "127.0.0.11", 2: "127.0.0.12"},
        forwarder=forwarder,
        admin_token=ADMIN,
        https=https,
        sessions=SessionStore(idle_timeout_s=60, max_age_s=600, clock=clock),
    )
    yield build_console_router(ctx)
    forwarder.close()


def call(
    router: Any,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> Response:
    req = Request(method, path, query or {}, headers or {}, body, client="127.0.0.1")
    return trio.run(router.dispatch, req)  # type: ignore[no-any-return]


def log_in(router: Any) -> dict[str, str]:
    resp = call(router, "POST", "/login", b'{"token": "%s"}' % ADMIN.encode(), MARKED)
    assert resp.status == 200, resp.body
    (cookie,) = [v for k, v in resp.headers if k == "set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert ("; Secure" in cookie) == router.ctx.https
    return {**MARKED, "cookie": cookie.split(";")[0]}


@pytest.mark.parametrize("https", [True], ids=["https"], indirect=True)
def test_over_https_the_cookie_is_secure(console: Any) -> None:
    headers = log_in(console)
    assert call(console, "GET", "/api/session", headers=headers).status == 200


def test_the_pages_come_with_a_policy_that_allows_only_the_consoles_own_script(
    console: Any,
) -> None:
    resp = call(console, "GET", "/")
    assert resp.status == 200 and resp.content_type.startswith("text/html")
    assert b'<script src="/console.js"' in resp.body
    headers = dict(resp.headers)
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert call(console, "GET", "/console.js").content_type.startswith("text/javascript")


def test_log_in_needs_the_header_the_same_origin_and_the_admin_token(console: Any) -> None:
    good = b'{"token": "%s"}' % ADMIN.encode()
    assert call(console, "POST", "/login", good).status == 403
    other_origin = {**MARKED, "origin": "http://evil.example"}
    assert call(console, "POST", "/login", good, other_origin).status == 403
    same_origin = {**MARKED, "origin": "http://127.0.0.1:5300"}
    assert call(console, "POST", "/login", good, same_origin).status == 200
    assert call(console, "POST", "/login", b'{"token": "the-api-token"}', MARKED).status == 401
    assert call(console, "POST", "/login", b"{", MARKED).status == 400
    assert call(console, "POST", "/login", b'{"token": ["x"]}', MARKED).status == 400


def test_api_routes_need_a_session_which_expires(console: Any, clock: Clock) -> None:
    assert call(console, "GET", "/api/session").status == 401
    forged = {"cookie": f"{COOKIE}=made-up"}
    assert call(console, "GET", "/api/session", headers=forged).status == 401
    headers = log_in(console)
    resp = call(console, "GET", "/api/session", headers=headers)
    assert resp.status == 200
    assert resp.body == {"node_id": 1, "nodes": {"1": "127.0.0.11", "2": "127.0.0.12"}}
    clock.now += 59  # used within the idle timeout: still valid, and counted as used
    assert call(console, "GET", "/api/session", headers=headers).status == 200
    clock.now += 61
    assert call(console, "GET", "/api/session", headers=headers).status == 401


def test_log_out_ends_the_session(console: Any) -> None:
    headers = log_in(console)
    assert call(console, "POST", "/logout", b"", headers).status == 200
    assert call(console, "GET", "/api/session", headers=headers).status == 401


def test_allowed_routes_run_the_apis_own_handlers_past_its_token_check(
    console: Any, seen: list[Request]
) -> None:
    headers = log_in(console)
    query = {"node": "1", "uid": "alice"}
    resp = call(console, "GET", "/api/connz", headers=headers, query=query)
    assert resp.status == 200
    assert resp.body["query"] == {"uid": "alice"}  # node is the console's: not passed on
    resp = call(console, "POST", "/api/cluster/drain", b'{"node_id": 2}', headers)
    assert resp.status == 200 and resp.body["node_id"] == 2
    assert [r.path for r in seen] == ["/connz", "/cluster/drain"]
    assert all(r.headers == {} for r in seen)  # the browser's cookie goes no further


def test_bad_console_requests_get_4xx(console: Any) -> None:
    headers = log_in(console)
    cases = [
        ("GET", "/api/user/token", {}, 404),  # an API route the console does not offer
        ("GET", "/api/connz", {"node": "x"}, 400),
        ("GET", "/api/connz", {"node": "9"}, 404),
        ("PUT", "/api/connz", {}, 405),
        ("GET", "/nothing", {}, 404),
    ]
    for method, path, query, status in cases:
        resp = call(console, method, path, headers=headers, query=query)
        assert resp.status == status, (method, path, query, resp.body)
    no_header = {"cookie": headers["cookie"]}
    assert call(console, "POST", "/api/cluster/drain", b'{"node_id": 2}', no_header).status == 403


def test_sessions_are_capped_oldest_first() -> None:
    clock = Clock()
    store = SessionStore(max_sessions=2, clock=clock)
    first = store.create()
    clock.now += 1
    second = store.create()
    clock.now += 1
    third = store.create()
    assert len(store) == 2
    assert not store.touch(first)
    assert store.touch(second) and store.touch(third)


def test_sessions_end_at_their_maximum_age_however_busy() -> None:
    clock = Clock()
    store = SessionStore(idle_timeout_s=10, max_age_s=25, clock=clock)
    sid = store.create()
    for _ in range(2):
        clock.now += 9
        assert store.touch(sid)
    clock.now += 9
    assert not store.touch(sid)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("", ""),
        (f"{COOKIE}=abc", "abc"),
        (f"other=1; {COOKIE}=abc; x", "abc"),
        (f'{COOKIE}="abc"', "abc"),
        (f"{COOKIE}", ""),
        (";;;==;", ""),
        (f"{COOKIE}x=1", ""),
    ],
)
def test_cookie_value(header: str, value: str) -> None:
    assert cookie_value(header, COOKIE) == value


@pytest.mark.parametrize("origin", ["http://[", "http://[::1", "null", "", "\xff\xfe"])
def test_an_origin_that_is_no_url_is_refused_not_a_crash(console: Any, origin: str) -> None:
    resp = call(console, "POST", "/login", b"{}", {**MARKED, "origin": origin})
    assert resp.status == 403


def test_a_null_origin_is_refused_even_without_a_host_header(console: Any) -> None:
    headers = {"x-raftchat-console": "1", "origin": "null"}
    assert call(console, "POST", "/login", b"{}", headers).status == 403
