"""Monitoring without a node: readiness decided from replicas' views, the per-node metrics
registry, and ``/connz``'s and ``/varz``' parameters and formats."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.config_sections import AuthSection
from node.http.auth import Credentials
from node.http.routes_monitoring import _sort_key, conn_info, uptime
from node.http.server import ApiError
from node.metrics import NodeMetrics, Traffic
from node.readiness import MAX_BEHIND, not_ready
from proto.wkproto import ReasonCode


@dataclass
class FakeReplica:
    leader: int | None = 1
    quorum: bool = True
    lag: int = 0

    def leader_id(self) -> int | None:
        return self.leader

    def has_quorum(self) -> bool:
        return self.quorum

    def behind(self) -> int:
        return self.lag


def test_ready_when_every_replica_has_a_leader_a_majority_and_no_backlog() -> None:
    assert not_ready({0: FakeReplica(), 3: FakeReplica(leader=2, lag=MAX_BEHIND)}) == []


def test_not_ready_names_each_problem() -> None:
    reasons = not_ready(
        {
            0: FakeReplica(leader=None),
            2: FakeReplica(quorum=False),
            5: FakeReplica(lag=MAX_BEHIND + 1),
        }
    )
    assert reasons == [
        "the controller group has no leader",
        "slot group 2: this replica is not connected to a majority",
        f"slot group 5: this replica is {MAX_BEHIND + 1} entries behind the leader",
    ]
    assert not_ready({}) == ["the controller group is not open on this node yet"]


def test_each_node_has_a_registry_of_its_own() -> None:
    # Several nodes in one process (unit and model tests) must not share or clash.
    one, two = NodeMetrics(), NodeMetrics()
    one.sendack("gateway", ReasonCode.SUCCESS, 0.004)
    one.sendack("http", 999)  # a code this server does not know still counts
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(one.render().decode())
        for s in f.samples
    }
    assert samples[("raftchat_sends_total", (("api", "gateway"), ("reason", "SUCCESS")))] == 1
    assert samples[("raftchat_sends_total", (("api", "http"), ("reason", "999")))] == 1
    assert samples[("raftchat_sendack_latency_seconds_bucket", (("le", "0.005"),))] == 1
    assert samples[("raftchat_sendack_latency_seconds_count", ())] == 1
    assert "process_open_fds" in {n for n, _ in samples}
    assert "raftchat_sends_total{" not in two.render().decode()


def test_metrics_route_is_exempt_and_varz_connz_are_not() -> None:
    c = Credentials(AuthSection(api_token="t"), lambda: True)  # type: ignore[arg-type]
    for path in ("/metrics", "/healthz", "/readyz"):
        assert c.refusal("GET", path, {}, []) is None
    for path in ("/varz", "/connz"):
        refusal = c.refusal("GET", path, {}, [])
        assert refusal is not None and refusal.status == 401


def test_uptime_is_printed_as_nats_does() -> None:
    assert uptime(0) == "0s"
    assert uptime(59.9) == "59s"
    assert uptime(61) == "1m1s"
    assert uptime(3600 + 2) == "1h0m2s"
    assert uptime(2 * 86400 + 3 * 3600 + 4 * 60 + 5) == "2d3h4m5s"
    assert uptime(-5) == "0s"  # a clock step back


@dataclass
class FakeConn:
    conn_id: int
    uid: str = "u"
    device_flag: int = 1
    device_level: int = 1
    device_id: str = "d"
    version: int = 4
    transport_kind: str = "ws"
    peer: str = "[::1]:4567"
    connected_at: float = 100.0
    last_active: float = 190.0
    traffic: Traffic = field(default_factory=Traffic)

    def pending_bytes(self) -> int:
        return 7


def test_conn_info_has_wukongims_fields() -> None:
    conn = FakeConn(1, traffic=Traffic(in_msgs=2, out_packet_bytes=30))
    info = conn_info(conn, now=200.0)
    assert info["ip"] == "::1" and info["port"] == 4567
    assert info["uptime"] == "1m40s" and info["idle"] == "10s"
    assert info["device"] == "Web(master)" and info["pending_bytes"] == 7
    assert info["in_msgs"] == 2 and info["out_packet_bytes"] == 30
    assert info["last_activity"] == "1970-01-01T00:03:10Z"
    assert conn_info(FakeConn(2, peer="?"), 200.0)["port"] == 0


def test_connz_sorts_as_wukongim_names_them() -> None:
    conns = [FakeConn(1, traffic=Traffic(in_msgs=5)), FakeConn(2, traffic=Traffic(in_msgs=9))]
    key, desc = _sort_key("inMsgDesc")
    assert [c.conn_id for c in sorted(conns, key=key, reverse=desc)] == [2, 1]
    key, desc = _sort_key("")
    assert [c.conn_id for c in sorted(conns, key=key, reverse=desc)] == [1, 2]
    with pytest.raises(ApiError) as e:
        _sort_key("cpuDesc")
    assert e.value.status == 400 and "inMsg" in e.value.msg


def test_traffic_adds_up_every_field() -> None:
    t = Traffic(1, 2, 3, 4, 5, 6, 7, 8)
    t.add(Traffic(1, 1, 1, 1, 1, 1, 1, 1))
    assert t == Traffic(2, 3, 4, 5, 6, 7, 8, 9)
