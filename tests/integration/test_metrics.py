"""Monitoring on a real three-node cluster with an API token: ``/metrics`` (parsed with
prometheus_client's own text parser) moves with sends, ``/varz`` and ``/connz`` show a logged-in
client as WuKongIM names its fields, ``/healthz``, ``/readyz`` and ``/metrics`` answer without
the token while ``/varz`` and ``/connz`` need it, and ``/readyz`` turns 503 when two nodes of
three are gone and 200 again once they are back."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from client.wkproto import open_client
from launcher.devcluster import start_all
from tests.conftest import Cluster, eventually

API_TOKEN = "metrics-api-token"
DEAD_WEBHOOK = "http://127.0.0.1:9/hook"
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "raftchat.json"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Webhooks to a port where nothing listens: their queue and failures show.
    c = Cluster(
        tmp_path_factory.mktemp("metrics"),
        3,
        auth__api_token=API_TOKEN,
        webhook__url=DEAD_WEBHOOK,
        webhook__backoff_cap_s=1,
    )
    c.start()
    try:
        yield c
    finally:
        c.stop()


def bare(cluster: Cluster, node_id: int) -> httpx.Client:
    """A client of a node's HTTP API that presents no token."""
    return httpx.Client(base_url=f"http://{cluster.hosts[node_id]}:5001", timeout=10.0)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(cluster: Cluster, node_id: int) -> Samples:
    with bare(cluster, node_id) as http:
        resp = http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_metrics_varz_and_connz_follow_a_client(cluster: Cluster) -> None:
    api1 = cluster.api(1)
    api1.token("alice", "tok-a")
    api1.token("bob", "tok-b")
    before = {n: scrape(cluster, n) for n in (1, 2, 3)}
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with (
            open_client(*cluster.tcp(1), uid="alice", token="tok-a", device_id="a-phone") as a,
            open_client(*cluster.tcp(2), uid="bob", token="tok-b") as b,
        ):
            for i in range(3):
                result = await a.send("bob", 1, f"hello {i}".encode())
                assert result.ok, result
            for _ in range(3):
                await b.recv()
            # While both are connected: what monitoring shows of them.
            seen["after"] = {n: scrape(cluster, n) for n in (1, 2, 3)}
            with bare(cluster, 1) as http:
                refused = http.get("/connz")
                assert refused.status_code == 401, refused.text
                assert http.get("/varz").status_code == 401
            seen["connz"] = api1.http.get("/connz", params={"uid": "alice"})
            seen["connz_sorted"] = api1.http.get("/connz", params={"sort": "inMsgDesc"})
            seen["varz"] = api1.http.get("/varz", params={"show": "conn"})
            seen["bad_sort"] = api1.http.get("/connz", params={"sort": "cpu"})
            seen["bad_limit"] = api1.http.get("/connz", params={"limit": "-1"})

    trio.run(main)
    after = seen["after"]
    one, two = after[1], after[2]

    # Sends by reason, SENDACK latency, connections by transport and version: node 1 holds
    # alice's connection.
    sent = value(one, "raftchat_sends_total", api="gateway", reason="SUCCESS")
    assert sent - value(before[1], "raftchat_sends_total", api="gateway", reason="SUCCESS") == 3
    assert value(one, "raftchat_sendack_latency_seconds_count") >= 3
    assert value(one, "raftchat_connections", transport="tcp", version="6") == 1
    # The three RECVs to bob's session on node 2.
    assert (
        value(two, "raftchat_deliveries_total") - value(before[2], "raftchat_deliveries_total") == 3
    )
    # Commits happen on the leader of bob's person channel's group, wherever it is.
    commits = sum(value(after[n], "raftchat_commit_latency_seconds_count") for n in (1, 2, 3))
    assert commits >= 1
    for n in (1, 2, 3):
        m = after[n]
        assert total(m, "raftchat_group_db_bytes") > 0
        diverged = [k for k in m if k[0] == "raftchat_group_diverged_refusals_total"]
        assert diverged and total(m, "raftchat_group_diverged_refusals_total") == 0
        assert value(m, "process_resident_memory_bytes") > 0
        assert value(m, "process_open_fds") > 0
        assert value(m, "process_cpu_seconds_total") > 0

    def groups_in_order() -> bool:
        """Each node reports every group it replicates with a leader; every group has one
        leader, which reports a lag for each of its two followers. Polled: the controller
        moves leaderships to even them out, and a group is leaderless for a moment then."""
        now = {n: scrape(cluster, n) for n in (1, 2, 3)}
        groups = {dict(ls)["group"] for (name, ls) in now[1] if name == "raftchat_group_term"}
        for m in now.values():
            known = [v for (name, _), v in m.items() if name == "raftchat_group_has_leader"]
            if len(known) < 2 or set(known) != {1}:  # the controller and slot groups
                return False
        leaders = sum(total(now[n], "raftchat_group_is_leader") for n in (1, 2, 3))
        lags = [k for n in (1, 2, 3) for k in now[n] if k[0] == "raftchat_group_follower_lag"]
        return "0" in groups and leaders == len(groups) and len(lags) == 2 * len(groups)

    eventually(groups_in_order, what="every group led, with its followers' lags")
    # The logins' user.onlinestatus events cannot reach the dead receiver.
    eventually(
        lambda: total(scrape(cluster, 1), "raftchat_webhook_failed_attempts_total") > 0,
        what="failed webhook attempts counted",
    )

    connz = seen["connz"]
    assert connz.status_code == 200, connz.text
    page = connz.json()
    assert page["total"] == 1 and page["offset"] == 0 and page["limit"] == 20
    (conn,) = page["connections"]
    assert conn["uid"] == "alice" and conn["device_id"] == "a-phone"
    assert conn["ip"] == "127.0.0.1" or conn["ip"].startswith("127.")
    assert conn["port"] > 0 and conn["version"] == 6 and conn["transport"] == "tcp"
    # Payload bytes as they came (encrypted here, so longer than the text).
    assert conn["in_msgs"] == 3 and conn["in_msg_bytes"] >= len(b"hello 0") * 3
    assert conn["in_packets"] >= 4  # CONNECT and three SENDs (and perhaps PINGs)
    assert conn["out_packets"] >= 4 and conn["out_packet_bytes"] > 0
    assert conn["device"] == "App(slave)"
    assert {"uptime", "idle", "last_activity", "pending_bytes"} <= set(conn)
    assert seen["connz_sorted"].json()["connections"][0]["uid"] == "alice"
    assert seen["bad_sort"].status_code == 400 and "sort" in seen["bad_sort"].json()["msg"]
    assert seen["bad_limit"].status_code == 400

    varz = seen["varz"]
    assert varz.status_code == 200, varz.text
    v = varz.json()
    assert v["server_id"] == "1" and v["connections"] == 1 and v["user_handler_count"] == 1
    assert v["in_msgs"] >= 3 and v["in_bytes"] > 0 and v["out_bytes"] > 0
    assert v["mem"] > 0 and v["tcp_addr"] == f"{cluster.hosts[1]}:5100"
    assert [c["uid"] for c in v["conns"]] == ["alice"]


def test_health_and_readiness_need_no_token(cluster: Cluster) -> None:
    with bare(cluster, 2) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}, ready.text
        # The exemption is for reading these routes, and for nothing else.
        assert http.get("/metrics").status_code == 200
        assert http.post("/metrics").status_code == 401
        assert http.get("/cluster/status").status_code in (401, 403)


def test_readyz_fails_without_a_majority_and_recovers(cluster: Cluster) -> None:
    # Last in this module: it takes two nodes down and back.
    with bare(cluster, 1) as http:
        assert http.get("/readyz").status_code == 200
        cluster.nodes[2].kill()
        cluster.nodes[3].kill()
        answers: list[httpx.Response] = []

        def not_ready() -> bool:
            answers.append(http.get("/readyz"))
            return answers[-1].status_code == 503

        eventually(not_ready, timeout_s=15, what="node 1 to report not ready")
        body = answers[-1].json()
        assert body["status"] == "not ready"
        assert any("controller group" in r for r in body["reasons"]), body
        assert http.get("/healthz").status_code == 200  # the process still serves

        start_all([cluster.nodes[2], cluster.nodes[3]])
        eventually(
            lambda: http.get("/readyz").status_code == 200,
            timeout_s=30,
            what="node 1 ready again",
        )


def test_the_dashboard_asks_only_for_metrics_a_node_exports(cluster: Cluster) -> None:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    wanted = {n for e in exprs for n in re.findall(r"\b((?:raftchat|process)_[a-z_]+)\b", e)}
    assert len(wanted) >= 15
    with bare(cluster, 1) as http:
        text = http.get("/metrics").text
    # Families, not samples: a gauge with nothing to count (no connections now) has none.
    families = {f.name for f in text_string_to_metric_families(text)}
    unknown = {n for n in wanted if re.sub(r"_(total|bucket|count|sum)$", "", n) not in families}
    assert not unknown, sorted(unknown)
