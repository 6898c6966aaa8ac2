"""The web console (``docs/console.md``) in headless Chromium against a real three-node
cluster: every page loads, and what it shows is checked against the HTTP API.

One cluster and one browser serve the whole module, in file order: the kick and the drain come
last, because they end a session and a node. A failing test leaves ``failure.png`` in its
pytest tmp dir. With ``CONSOLE_SCREENSHOTS=<dir>`` each page's screenshot is written there
(``make console-screenshots`` refreshes ``docs/console/``).

The browser is Debian's ``chromium`` with its ``chromedriver`` (``make test`` installs them when
it runs as root); nothing downloads one. Without them the module is skipped, or fails when
``CI=true``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio

from client.sync import Portal
from client.wkproto import WKClient, open_client
from launcher.devcluster import CONSOLE_PORT
from tests.conftest import ADMIN_TOKEN, PHASE_REPORTS, Api, Cluster, start_node
from tests.integration.test_metrics import scrape, total

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 20.0
TOKEN = "console-test-token"

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - selenium is in the dev extras
    webdriver = None  # type: ignore[assignment]


T = TypeVar("T")


def _browser_missing() -> str:
    if webdriver is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) and os.access(path, os.X_OK)):
            return f"{path} is missing: apt-get install chromium chromium-driver"
    return ""


MISSING = _browser_missing()
if MISSING and os.environ.get("CI") != "true":
    pytest.skip(f"the console tests need a browser: {MISSING}", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # No rate limit per channel: the message browser's test fills a channel past one page.
    with Cluster(tmp_path_factory.mktemp("console"), 3, messages__group_rate_limit=0) as c:
        yield c


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if MISSING:  # with CI=true: every test of the module fails, the other modules run
        pytest.fail(f"the console tests need a browser: {MISSING}", pytrace=False)
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",  # root, as CI runs
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        # Without these Chromium's own connections (updates, sync, field trials) go out and
        # are refused on a closed network, which stalls page loads.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,860",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager is never asked to download one.
    d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(autouse=True)
def screenshot_on_failure(
    request: pytest.FixtureRequest, driver: WebDriver, tmp_path: Path
) -> Iterator[None]:
    yield
    report = request.node.stash.get(PHASE_REPORTS, {}).get("call")
    if report is not None and report.failed:
        path = tmp_path / "failure.png"
        driver.save_screenshot(str(path))
        print(f"console screenshot of the failure: {path}")


def console_url(cluster: Cluster, node_id: int = 1) -> str:
    return f"http://{cluster.hosts[node_id]}:{CONSOLE_PORT}"


def wait(driver: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    # The pages re-render their parts when an answer comes: an element found a moment ago may
    # be gone when it is read, and the check then simply runs again.
    return WebDriverWait(
        driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    ).until(check, message=what)


def open_page(driver: WebDriver, page: str, *, form: bool = False) -> None:
    """Show a page and wait until it has drawn its first answer (a form page: until it is
    there; it draws an answer once the form is sent)."""
    driver.execute_script(f"location.hash = '#/{page}'")
    loaded = "true" if form else "m.dataset.loaded === '1'"
    wait(
        driver,
        lambda d: d.execute_script(
            f"const m = document.getElementById('main');"
            f"return m.dataset.page === '{page}' && {loaded};"
        ),
        f"page {page} loaded",
    )


def screenshot(driver: WebDriver, name: str) -> None:
    target = os.environ.get("CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / f"{name}.png"))


def fresh(read: Callable[[], T]) -> T:
    """``read()``, again if the page redrew what it was reading (the cluster, throughput and
    connections pages redraw on a timer): a stale element means "read it again"."""
    for _ in range(50):
        try:
            return read()
        except StaleElementReferenceException:
            continue
    return read()


def cells(driver: WebDriver, table_id: str) -> list[list[str]]:
    def read() -> list[list[str]]:
        rows = driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
        return [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]

    return fresh(read)


def row_texts(driver: WebDriver, css: str) -> list[str]:
    """The cells of the first row that ``css`` selects (waited for), as text."""
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, css), css)
    return fresh(
        lambda: [
            td.text
            for td in driver.find_element(By.CSS_SELECTOR, css).find_elements(By.TAG_NAME, "td")
        ]
    )


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class HeldClient:
    """A WKProto client logged in on a background trio loop, for as long as a test needs it."""

    def __init__(self, cluster: Cluster, node_id: int, uid: str) -> None:
        host, port = cluster.tcp(node_id)
        self.portal: Portal[WKClient] = Portal(
            lambda: open_client(host, port, uid=uid, token=TOKEN), f"client-{uid}"
        )
        self.client = self.portal.value

    def closed_within(self, timeout_s: float) -> bool:
        async def wait_closed() -> bool:
            with trio.move_on_after(timeout_s):
                await self.client.closed.wait()
            return self.client.closed.is_set()

        return self.portal.call(wait_closed)

    def close(self) -> None:
        self.portal.close()


# ---- the console's own door -----------------------------------------------------------


def test_console_needs_the_admin_token_and_refuses_bad_input(cluster: Cluster) -> None:
    base = console_url(cluster)
    marked = {"x-raftchat-console": "1"}
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/").status_code == 200  # the page itself, with its log-in form
        assert http.get("/api/overview").status_code == 401
        assert http.post("/login", json={"token": ADMIN_TOKEN}).status_code == 403  # no header
        evil = {**marked, "origin": "http://evil.example"}
        assert http.post("/login", json={"token": ADMIN_TOKEN}, headers=evil).status_code == 403
        assert http.post("/login", json={"token": "wrong"}, headers=marked).status_code == 401
        assert http.post("/login", content=b"{not json", headers=marked).status_code == 400
        assert http.post("/login", json=[1], headers=marked).status_code == 400
        assert http.post("/login", json={"token": 7}, headers=marked).status_code == 400
        resp = http.post("/login", json={"token": ADMIN_TOKEN}, headers=marked)
        assert resp.status_code == 200
        cookie = resp.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "script-src 'self'" in resp.headers["content-security-policy"]
        # A session reaches the routes the console uses, and no other.
        assert http.get("/api/session").json()["node_id"] == 1
        assert http.post("/api/user/token", json={}, headers=marked).status_code == 404
        assert http.get("/api/channel/list").status_code == 404
        assert http.get("/api/connz", params={"node": "x"}).status_code == 400
        assert http.get("/api/connz", params={"node": "99"}).status_code == 404
        assert http.get("/api/connz", params={"sort": "nonsense"}).status_code == 400
        assert http.post("/api/cluster/drain", json={}, headers=marked).status_code == 400
        assert http.post("/api/cluster/drain", json={"node_id": 1}).status_code == 403
        assert http.delete("/api/overview").status_code == 403  # no header: refused first
        assert http.request("PUT", "/api/overview", headers=marked).status_code == 405
        # What another node answers comes through as it answered.
        assert http.get("/api/connz", params={"node": "2", "limit": "x"}).status_code == 400
        assert http.post("/logout", headers=marked).status_code == 200
        assert http.get("/api/session").status_code == 401


HOSTILE: list[tuple[str, str, dict[str, str], dict[str, str], bytes]] = [
    # method, path, query, extra headers, body
    ("POST", "/login", {}, {}, b"\xff\xfe not utf-8"),
    ("POST", "/login", {}, {}, b"[" * 5000 + b"]" * 5000),
    ("POST", "/login", {}, {}, b'{"token": "\\ud800"}'),
    ("POST", "/login", {}, {}, b'{"token": "' + b"x" * 100_000 + b'"}'),
    ("GET", "/api/connz", {"node": "9" * 5000}, {}, b""),
    ("GET", "/api/connz", {"node": "-1"}, {}, b""),
    ("GET", "/api/connz", {"limit": "1" * 100}, {}, b""),
    ("GET", "/api/metrics", {"node": "2", "x": "\u0000"}, {}, b""),
    ("POST", "/api/channel/messagesync", {}, {}, b'{"channel_id": {"a": 1}}'),
    ("POST", "/api/user/onlinestatus", {}, {}, b'"alice"'),
    ("POST", "/api/user/device_quit", {}, {}, b'{"uid": "", "device_flag": 7}'),
    ("POST", "/api/cluster/leave", {}, {}, b'{"node_id": 99999999999999999999999}'),
    ("GET", "/api/%2e%2e/console.js", {}, {}, b""),
    ("GET", "/api/overview", {}, {"cookie": "raftchat_console=" + "a" * 10_000}, b""),
    ("POST", "/logout", {}, {"origin": "null"}, b""),
    ("POST", "/logout", {}, {"origin": "http://["}, b""),
]


def test_hostile_requests_get_4xx_and_the_console_serves_on(cluster: Cluster) -> None:
    base = console_url(cluster)
    marked = {"x-raftchat-console": "1"}
    with (
        httpx.Client(base_url=base, timeout=10) as anonymous,
        httpx.Client(base_url=base, timeout=10) as logged_in,
    ):
        assert logged_in.post("/login", json={"token": ADMIN_TOKEN}, headers=marked).is_success
        for http in (anonymous, logged_in):
            for method, path, query, headers, body in HOSTILE:
                resp = http.request(
                    method, path, params=query, headers={**marked, **headers}, content=body
                )
                # Without a session everything is refused; with one, an odd but harmless
                # request (an unknown query parameter) may be served, and none is a 5xx.
                low = 400 if http is anonymous else 200
                assert low <= resp.status_code < 500, (method, path, query, resp.text[:200])
        assert logged_in.get("/api/session").status_code == 200
    log = cluster.nodes[1].log_path.read_text()
    assert "handler failed" not in log and "connection failed" not in log


@pytest.mark.parametrize(
    ("settings", "logged"),
    [
        ({}, "web console not served: it needs auth.admin_token"),
        ({"auth__admin_token": ADMIN_TOKEN, "console__enabled": False}, ""),
    ],
)
def test_no_console_without_an_admin_token_or_when_disabled(
    tmp_path: Path, settings: dict[str, Any], logged: str
) -> None:
    node = start_node(tmp_path, **settings)
    try:
        assert "console" not in node.endpoints
        assert Api.of(node).http.get("/varz").json()["manager_addr"] == ""
        host = node.endpoints["http"].split("//")[1].split(":")[0]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{host}:{CONSOLE_PORT}/", timeout=5)
    finally:
        node.stop()
    if logged:
        assert logged in node.log_path.read_text()


def test_log_in_page(cluster: Cluster, driver: WebDriver) -> None:
    driver.get(console_url(cluster) + "/#/cluster")
    wait(driver, lambda d: d.find_element(By.ID, "login").is_displayed(), "the log-in form")
    driver.find_element(By.ID, "token").send_keys("not the token")
    screenshot(driver, "login")
    driver.find_element(By.ID, "login-button").click()
    wait(
        driver,
        lambda d: "wrong admin token" in d.find_element(By.ID, "login-error").text,
        "the refusal",
    )
    assert not driver.find_element(By.ID, "nav").is_displayed()
    driver.find_element(By.ID, "token").clear()
    driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    driver.find_element(By.ID, "login-button").click()
    wait(driver, lambda d: d.find_element(By.ID, "nav").is_displayed(), "the console")
    assert driver.find_element(By.ID, "who").text == "node 1"
    # The session cookie is HttpOnly: the page's script cannot read it.
    assert "raftchat_console" not in driver.execute_script("return document.cookie")


# ---- the pages --------------------------------------------------------------------------


def leaderships(cluster: Cluster) -> dict[int, set[int]]:
    """The groups each node leads, as each node's own ``/cluster/status`` says."""
    out = {}
    for n in cluster.nodes:
        groups = cluster.status(n)["groups"]
        out[n] = {g["group"] for g in groups if g.get("is_leader")}
    return out


def test_cluster_page_shows_nodes_leaders_and_lag_as_the_cluster_reports_them(
    cluster: Cluster, driver: WebDriver
) -> None:
    # The controller may still move leaderships to balance them after the start: compare a
    # page drawn between two equal readings of the API.
    for _ in range(20):
        before = leaderships(cluster)
        status = cluster.status(1)
        driver.refresh()
        open_page(driver, "cluster")
        nodes = {int(row[0]): row for row in cells(driver, "nodes")}
        groups = {row[0]: row for row in cells(driver, "groups")}
        if leaderships(cluster) == before:
            break
    else:
        pytest.fail("leaderships kept moving")
    screenshot(driver, "cluster")
    assert set(nodes) == {int(n) for n in status["nodes"]}
    for n, row in nodes.items():
        assert row[1] == status["nodes"][str(n)]
        assert row[2] == status["zones"].get(str(n), "")  # none given here
        assert row[3] == "ok"
        shown = {0 if g == "ctrl" else int(g) for g in row[4].split(", ") if g}
        assert shown == before[n], (n, shown, before[n])
    assert len(groups) == len(status["groups"])
    leader_of = {g: n for n, led in before.items() for g in led}
    for g in status["groups"]:
        row = groups["ctrl" if g["group"] == 0 else str(g["group"])]
        assert row[1] == ",".join(map(str, g["replicas"]))
        assert row[2] == str(leader_of[g["group"]])
        # Every follower is named with its lag (a number: every member answered).
        lags = dict(part.split(":") for part in row[7].split())
        assert {int(r) for r in lags} == set(g["replicas"]) - {leader_of[g["group"]]}
        assert all(v.isdigit() for v in lags.values())


def test_throughput_page_charts_the_members_metrics(cluster: Cluster, driver: WebDriver) -> None:
    api = cluster.api(2)
    api.client.channel_create("ops", 2, ["alice", "bob"])
    open_page(driver, "throughput")
    # Two samples make a rate and a line; sends after them show in the next samples.
    wait(
        driver,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chart-sends polyline")) == 1,
        "the sends chart",
    )
    for i in range(6):
        api.client.send("alice", "ops", 2, json.dumps({"type": 1, "content": f"hello {i}"}))
    wait(
        driver,
        lambda d: d.find_element(By.ID, "rate-sends").text not in ("", "0.00/s"),
        "a rate of sends",
    )
    assert driver.find_element(By.ID, "rate-commit").text != "0.00 ms"
    expected = {n: total(scrape(cluster, n), "raftchat_sends_total") for n in cluster.nodes}
    assert sum(expected.values()) >= 6

    def shown() -> dict[int, float]:
        return {int(row[0]): float(row[1]) for row in cells(driver, "totals")}

    wait(driver, lambda d: shown() == expected, f"the totals of /metrics, {expected}")
    screenshot(driver, "throughput")


def test_connections_page_lists_a_connected_client(cluster: Cluster, driver: WebDriver) -> None:
    cluster.api(1).token("carol", TOKEN)
    held = HeldClient(cluster, 2, "carol")
    try:
        open_page(driver, "connections")
        tds = row_texts(driver, "#connections tr[data-uid='carol']")
        connz = cluster.api(2).http.get("/connz", params={"uid": "carol"}).json()
        (conn,) = connz["connections"]
        assert tds[0] == "2"  # the node it is connected to
        assert tds[1] == str(conn["id"])
        assert tds[3] == conn["device"]
        assert tds[4] == conn["transport"] == "tcp"
        assert tds[5] == f"{conn['ip']}:{conn['port']}"
        screenshot(driver, "connections")
    finally:
        held.close()


def look_up_channel(driver: WebDriver, channel_id: str) -> None:
    """Look a group channel up on the channels page and wait for its newest messages."""
    open_page(driver, "channels", form=True)
    driver.find_element(By.ID, "channel-id").clear()
    driver.find_element(By.ID, "channel-id").send_keys(channel_id)
    driver.find_element(By.ID, "channel-lookup").click()
    wait(
        driver,
        lambda d: d.execute_script("return document.getElementById('main').dataset.loaded"),
        f"the messages of {channel_id}",
    )


def test_channel_browser_shows_the_channel_and_its_messages(
    cluster: Cluster, driver: WebDriver
) -> None:
    api = cluster.api(3)
    api.client.channel_create("ops", 2, ["alice", "bob"])
    api.client.send("bob", "ops", 2, json.dumps({"type": 1, "content": "<b>not markup</b>"}))
    synced = api.ok(
        "/channel/messagesync",
        {"login_uid": "alice", "channel_id": "ops", "channel_type": 2, "limit": 100},
    )["messages"]
    look_up_channel(driver, "ops")
    rows = cells(driver, "messages")
    assert [int(r[0]) for r in rows] == [m["message_seq"] for m in reversed(synced)]
    assert [r[2] for r in rows] == [m["from_uid"] for m in reversed(synced)]
    for row, m in zip(rows, reversed(synced), strict=True):
        assert row[1] == m["message_idstr"]
        assert json.loads(row[5]) == json.loads(base64.b64decode(m["payload"]))
    # A payload is shown as text, never as markup.
    assert "<b>not markup</b>" in rows[0][5]
    assert not driver.find_elements(By.CSS_SELECTOR, "#messages b")
    ops = {"channel_id": "ops", "channel_type": 2}
    head = api.http.get("/channel/max_message_seq", params=ops)
    assert driver.find_element(By.ID, "head-seq").text == str(head.json()["message_seq"])
    subscribers = api.http.get("/channel/subscribers", params=ops)
    assert driver.find_element(By.ID, "subscribers").text == ", ".join(subscribers.json())
    screenshot(driver, "channels")


def test_channel_browser_pages_back_through_older_messages(
    cluster: Cluster, driver: WebDriver
) -> None:
    api = cluster.api(1)
    api.client.channel_create("history", 2, ["alice"])
    for i in range(1, 56):
        api.client.send("alice", "history", 2, json.dumps({"type": 1, "content": f"m{i}"}))
    look_up_channel(driver, "history")
    assert [int(r[0]) for r in cells(driver, "messages")] == list(range(55, 5, -1))
    driver.find_element(By.ID, "older").click()
    wait(driver, lambda d: len(cells(d, "messages")) == 55, "the older messages")
    rows = cells(driver, "messages")
    assert [int(r[0]) for r in rows] == list(range(55, 0, -1))
    assert json.loads(rows[-1][5]) == {"type": 1, "content": "m1"}
    assert not driver.find_elements(By.ID, "older")  # nothing older is left


def test_user_lookup_shows_online_devices_and_kicks_after_confirmation(
    cluster: Cluster, driver: WebDriver
) -> None:
    api = cluster.api(1)
    api.token("dave", TOKEN)
    held = HeldClient(cluster, 3, "dave")
    try:
        assert api.ok("/user/onlinestatus", ["dave"]) == [
            {"uid": "dave", "device_flag": 0, "online": 1}
        ]
        open_page(driver, "users", form=True)
        driver.find_element(By.ID, "user-uid").send_keys("dave")
        driver.find_element(By.ID, "user-lookup").click()
        device = "#devices tr[data-flag='0']"
        tds = row_texts(driver, device)
        assert tds[0] == "App"
        assert "node 3 (tcp" in tds[2]
        fresh(lambda: driver.find_element(By.CSS_SELECTOR, f"{device} button.kick").click())
        assert "Kick dave's App devices?" in driver.find_element(By.ID, "confirm-text").text
        screenshot(driver, "users")
        assert not held.closed_within(0.5)  # nothing happens before the confirmation
        driver.find_element(By.ID, "confirm-yes").click()
        assert held.closed_within(10.0)
        wait(
            driver,
            lambda d: d.find_element(By.ID, "user-summary").text == "dave: not online.",
            "dave offline",
        )
        assert api.ok("/user/onlinestatus", ["dave"]) == []
    finally:
        held.close()


def test_every_node_serves_the_console(cluster: Cluster) -> None:
    """Node 2's console, with a session of its own, answers for the cluster too."""
    with httpx.Client(base_url=console_url(cluster, 2), timeout=10) as http:
        marked = {"x-raftchat-console": "1"}
        assert http.post("/login", json={"token": ADMIN_TOKEN}, headers=marked).status_code == 200
        overview = http.get("/api/overview").json()
        assert overview["node_id"] == 2
        assert {n["node_id"] for n in overview["nodes"]} >= {1, 2}
    # /varz names it as WuKongIM's manager address.
    varz = cluster.api(2).http.get("/varz").json()
    assert varz["manager_addr"] == console_url(cluster, 2) + "/"


def test_actions_confirm_before_they_act_and_drain_ends_the_node(
    cluster: Cluster, driver: WebDriver
) -> None:
    open_page(driver, "actions")
    members = [int(r[0]) for r in cells(driver, "members")]
    assert members == sorted(int(n) for n in cluster.status(1)["nodes"])

    def row(node_id: int) -> Any:
        return driver.find_element(By.CSS_SELECTOR, f"#members tr[data-node='{node_id}']")

    def result() -> str:
        return str(driver.find_element(By.ID, "action-result").text)

    def error() -> str:
        return str(driver.find_element(By.ID, "action-error").text)

    # A leave below cluster.replicas is refused by the cluster, and the page says why.
    row(3).find_element(By.CSS_SELECTOR, "button.leave").click()
    driver.find_element(By.ID, "confirm-yes").click()
    wait(driver, lambda d: error().startswith("HTTP 409"), "the refused leave")
    # Join: the cluster's answer (a node joins by itself) is shown.
    driver.find_element(By.ID, "join-id").send_keys("4")
    driver.find_element(By.ID, "join-host").send_keys("127.0.0.99")
    driver.find_element(By.ID, "join-button").click()
    driver.find_element(By.ID, "confirm-yes").click()
    wait(driver, lambda d: error().startswith("HTTP 410"), "the join answer")
    assert "joins by itself" in error()
    # Drain: a confirmation, then the node drains and exits.
    row(3).find_element(By.CSS_SELECTOR, "button.drain").click()
    assert driver.find_element(By.ID, "confirm-text").text.startswith("Drain node 3?")
    screenshot(driver, "actions")
    driver.find_element(By.ID, "confirm-no").click()
    assert not driver.find_elements(By.ID, "confirm")
    assert cluster.status(1)["draining"] == []
    row(3).find_element(By.CSS_SELECTOR, "button.drain").click()
    driver.find_element(By.ID, "confirm-yes").click()
    wait(driver, lambda d: result() == "Node 3 is draining.", "the drain")
    proc = cluster.nodes[3].proc
    assert proc is not None
    assert proc.wait(timeout=30) == 0


def test_the_pages_show_a_member_that_is_gone(cluster: Cluster, driver: WebDriver) -> None:
    """After the drain above, node 3 is a member that no longer answers."""
    assert not cluster.nodes[3].running
    open_page(driver, "cluster")
    wait(
        driver,
        lambda d: (
            {int(r[0]): r[3] for r in cells(d, "nodes")} == {1: "ok", 2: "ok", 3: "unreachable"}
        ),
        "node 3 unreachable",
    )
    open_page(driver, "throughput")
    rows = {int(r[0]): r for r in cells(driver, "totals")}
    assert rows[3][1].startswith("HTTP 502: node 3 cannot be reached")
    assert all(rows[n][1].replace(".", "").isdigit() for n in (1, 2))
    open_page(driver, "connections")
    summary = fresh(lambda: driver.find_element(By.ID, "connections-summary").text)
    assert "node 3: HTTP 502" in summary and "node 1: 0" in summary
