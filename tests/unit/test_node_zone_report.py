"""A member's zone reaches the map: the node asks until it is recorded (``node/zone_report.py``),
and only the member itself may ask (``Admin``'s ``zone`` operation), through the controller's
leader (``Controller.set_zone``, in ``test_node_controller.py``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio

from cluster.placement import Placement
from node import zone_report
from node.admin import REFUSED, Admin, AdminError, AdminRefused
from node.zone_report import report_zone


class FakeLeader:
    """The controller's leader as a node sees it: the first ``failures`` asks fail."""

    def __init__(self, failures: int = 0, refuse: bool = False) -> None:
        self.zones: dict[int, str] = {}
        self.asked: list[dict[str, Any]] = []
        self.failures = failures
        self.refuse = refuse

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(request)
        if self.refuse:
            raise AdminRefused("node 1: node 5 is not a member")
        if len(self.asked) <= self.failures:
            raise AdminError("no controller leader")
        self.zones[request["node_id"]] = request["zone"]
        return {"ok": True}


def report(cluster: FakeLeader, zone: str, recorded: str = "") -> bool:
    return trio.run(report_zone, 5, zone, lambda: cluster.zones.get(5, recorded), cluster.ask)


def test_a_zone_the_map_has_is_not_asked_for() -> None:
    cluster = FakeLeader()
    cluster.zones[5] = "m1"
    assert report(cluster, "m1") and cluster.asked == []
    plain = FakeLeader()
    assert report(plain, "") and plain.asked == []  # no zone, none recorded


def test_a_zone_is_asked_for_until_it_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zone_report, "FIRST_RETRY_S", 0.001)
    cluster = FakeLeader(failures=2)
    assert report(cluster, "m1")
    assert cluster.asked == [{"op": "zone", "node_id": 5, "zone": "m1"}] * 3
    assert cluster.zones == {5: "m1"}
    # a zone no longer named is asked away
    assert report(cluster, "") and cluster.zones == {5: ""}


def test_a_refusal_ends_the_asking() -> None:
    cluster = FakeLeader(refuse=True)
    assert not report(cluster, "m1")
    assert len(cluster.asked) == 1


def test_the_retries_slow_down_to_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(zone_report.trio, "sleep", sleep)
    assert report(FakeLeader(failures=9), "m1")
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]


# --- who may ask ------------------------------------------------------------------------------


def admin_of(placement: Placement, set_zone: list[tuple[int, str]]) -> Admin:
    """An Admin on the controller's leader, whose members are ``placement``'s."""

    async def record(node_id: int, zone: str) -> Placement:
        set_zone.append((node_id, zone))
        placement.set_zone(node_id, zone)
        return placement

    controller = SimpleNamespace(group=SimpleNamespace(is_leader=lambda: True), set_zone=record)
    return Admin(
        1,
        SimpleNamespace(placement=placement),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        lambda: controller,  # type: ignore[arg-type,return-value]
        cluster_id=lambda: "c1",
        peer_draining=lambda _node_id: None,
        start_drain=lambda: None,
    )


MAP = Placement(4, [1] * 256, {1: [1, 2]}, {1: "10.0.0.1", 2: "10.0.0.2"})


@pytest.mark.parametrize(
    ("request_", "caller", "why"),
    [
        # another member asks for node 2's zone
        ({"op": "zone", "node_id": 2, "zone": "m1"}, "10.0.0.1", "can only be asked by that"),
        # a stranger forwards it
        ({"op": "zone", "node_id": 2, "zone": "m1", "forwarded": True}, "10.9.9.9", "a member"),
        ({"op": "zone", "node_id": 7, "zone": "m1"}, "10.0.0.7", "node 7 is not a member"),
        ({"op": "zone", "node_id": 2, "zone": 5}, "10.0.0.2", "a zone is a string"),
        ({"op": "zone", "node_id": 2, "zone": ["m1"]}, "10.0.0.2", "a zone is a string"),
        ({"op": "zone", "node_id": [2], "zone": "m1"}, "10.0.0.2", "node_id must be an integer"),
        ({"op": "zone", "node_id": "2", "zone": "m1"}, "10.0.0.2", "node_id must be an integer"),
        ({"op": "zone", "zone": "m1"}, "10.0.0.2", "node_id must be an integer, got NoneType"),
        ({"op": "join", "node_id": {}, "host": "10.0.0.9"}, "10.0.0.9", "must be an integer"),
    ],
)
def test_only_the_member_itself_sets_its_zone(
    request_: dict[str, Any], caller: str, why: str
) -> None:
    recorded: list[tuple[int, str]] = []
    admin = admin_of(Placement(4, [1] * 256, {1: [1, 2]}, dict(MAP.nodes)), recorded)
    reply = trio.run(admin.handle, request_, caller)
    assert reply["code"] == REFUSED and why in reply["error"], reply
    assert recorded == []


def test_a_member_sets_its_own_zone() -> None:
    recorded: list[tuple[int, str]] = []
    placement = Placement(4, [1] * 256, {1: [1, 2]}, dict(MAP.nodes))
    admin = admin_of(placement, recorded)
    reply = trio.run(admin.handle, {"op": "zone", "node_id": 2, "zone": "m1"}, "10.0.0.2")
    assert reply == {"ok": True, "version": 4}
    forwarded = {"op": "zone", "node_id": 1, "zone": "m2", "forwarded": True}
    assert trio.run(admin.handle, forwarded, "10.0.0.2") == {"ok": True, "version": 4}
    assert recorded == [(2, "m1"), (1, "m2")]
