"""Who may call which route (``node/http/auth.py``), decided without a node: the API token,
the admin token, the exempt routes and the cluster-administration rules."""

from __future__ import annotations

import pytest

from node.config_sections import AuthSection
from node.http.auth import EXEMPT_ROUTES, Credentials, Refusal, presented_tokens

API = "api-token-1"
ADMIN = "admin-token-1"


def creds(*, multi: bool = False, **auth: str) -> Credentials:
    return Credentials(AuthSection(**auth), lambda: multi)  # type: ignore[arg-type]


def status(c: Credentials, method: str, path: str, *tokens: str, **query: str) -> int:
    refusal = c.refusal(method, path, query, list(tokens))
    return 200 if refusal is None else refusal.status


def test_tokens_come_from_the_token_header_or_a_bearer_authorization() -> None:
    assert presented_tokens({"token": " t1 "}) == ["t1"]
    assert presented_tokens({"authorization": "Bearer t2"}) == ["t2"]
    assert presented_tokens({"authorization": "bearer  t2 "}) == ["t2"]
    assert presented_tokens({"authorization": "Basic dTpw"}) == []
    assert presented_tokens({"authorization": "Bearer"}) == []
    assert presented_tokens({"token": "a", "authorization": "Bearer b"}) == ["a", "b"]
    assert presented_tokens({}) == []


def test_every_product_route_needs_the_api_token_once_one_is_set() -> None:
    c = creds(api_token=API, admin_token=ADMIN)
    for method, path in [("POST", "/user/token"), ("POST", "/message/send"), ("GET", "/nope")]:
        assert status(c, method, path) == 401
        assert status(c, method, path, "wrong") == 401
        assert status(c, method, path, ADMIN) == 401  # the admin token is not an API token
        assert status(c, method, path, API) == 200
        assert status(c, method, path, "wrong", API) == 200  # token header wrong, bearer right
    # Without an API token the product API is open, as WuKongIM's.
    assert status(creds(), "POST", "/user/token") == 200


def test_the_exempt_routes_need_nothing() -> None:
    c = creds(api_token=API, admin_token=ADMIN)
    assert ("GET", "/health") in EXEMPT_ROUTES
    for method, path in EXEMPT_ROUTES:
        assert status(c, method, path) == 200
    assert status(c, "POST", "/health") == 401  # the exemption is per method too
    # /route tells clients where to connect before they log in; its intranet view does not.
    assert status(c, "GET", "/route", uid="u1") == 200
    assert status(c, "GET", "/route", intranet="0") == 200
    assert status(c, "GET", "/route", intranet="1") == 401
    assert status(c, "GET", "/route", API, intranet="1") == 200
    assert status(c, "POST", "/route/batch") == 401


def test_cluster_routes_take_the_admin_token_only() -> None:
    for multi in (False, True):
        c = creds(api_token=API, admin_token=ADMIN, multi=multi)
        for method, path in [
            ("GET", "/cluster/status"),
            ("GET", "/cluster/digest"),
            ("POST", "/cluster/join"),
            ("POST", "/cluster/leave"),
            ("POST", "/cluster/made-up"),
        ]:
            assert status(c, method, path) == 401
            assert status(c, method, path, API) == 401
            assert status(c, method, path, ADMIN) == 200


def test_without_an_admin_token_no_route_changes_the_cluster() -> None:
    """Safe by default: membership changes need a secret that nobody set."""
    for multi in (False, True):
        c = creds(multi=multi)
        for path in ("/cluster/join", "/cluster/leave"):
            refusal = c.refusal("POST", path, {}, [])
            assert refusal is not None and refusal.status == 403
            assert "auth.admin_token" in refusal.msg
    # A lone node's status reads like a product route; a multi-node cluster's not at all.
    assert status(creds(), "GET", "/cluster/status") == 200
    assert status(creds(api_token=API), "GET", "/cluster/status") == 401
    assert status(creds(api_token=API), "GET", "/cluster/status", API) == 200
    assert status(creds(multi=True), "GET", "/cluster/status") == 403
    assert status(creds(api_token=API, multi=True), "GET", "/cluster/status", API) == 403


def test_previous_tokens_are_accepted_during_a_rotation() -> None:
    c = creds(
        api_token="api-new",
        api_token_previous="api-old",
        admin_token="admin-new",
        admin_token_previous="admin-old",
    )
    for token in ("api-new", "api-old"):
        assert status(c, "POST", "/message/send", token) == 200
    for token in ("admin-new", "admin-old"):
        assert status(c, "POST", "/cluster/leave", token) == 200
    assert status(c, "POST", "/message/send", "api-older") == 401


def test_a_refusal_never_repeats_what_was_presented() -> None:
    c = creds(api_token=API, admin_token=ADMIN)
    presented = "presented-secret-xyz"
    for path in ("/message/send", "/cluster/leave"):
        refusal = c.refusal("POST", path, {}, [presented])
        assert isinstance(refusal, Refusal)
        assert presented not in refusal.msg and API not in refusal.msg and ADMIN not in refusal.msg


@pytest.mark.parametrize("given", ["", API + "x", API[:-1], API.upper()])
def test_near_misses_are_wrong(given: str) -> None:
    c = creds(api_token=API)
    assert status(c, "POST", "/message/send", *([given] if given else [])) == 401
