"""Membership decisions of the controller (``node/controller.py``) on a real controller state
machine and store, with the Raft group and the admin calls to other nodes faked: a refused or
failed join changes nothing, leaves cannot take the cluster below its replicas together, a
forced leave is logged, and a controller voter the map does not list is removed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from cluster.placement import NodeAddress, Placement, initial_placement
from node.admin import AdminError
from node.controller import Controller, ControllerMachine
from node.storage import Store
from proto.raftchat.peer.v1 import peer_pb2 as pb

HOSTS = {1: "10.0.0.1", 2: "10.0.0.2", 3: "10.0.0.3", 4: "10.0.0.4"}


class FakeGroup:
    """The controller group as the leader sees it: a proposal is applied at once, after a
    checkpoint (as a real proposal waits for Raft), in proposal order."""

    def __init__(self, machine: ControllerMachine) -> None:
        self.machine = machine
        self.index = 0

    async def propose(self, command: pb.Command, _timeout_s: float) -> bytes:
        await trio.sleep(0)
        self.index += 1
        return self.machine.apply(self.index, command.SerializeToString())

    def is_leader(self) -> bool:
        return True


class FakeAdmin:
    """Admin calls to nodes: recorded; a Raft change can be made to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, Any]]] = []
        self.fail_changes = False
        self.strangers: list[str] = []

    async def __call__(self, node_id: int, request: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((node_id, request))
        await trio.sleep(0)
        if request["op"] == "change_members":
            if self.fail_changes:
                raise AdminError(f"node {node_id}: membership change of group 0 failed (timeout)")
            if request.get("remove_address") in self.strangers:
                self.strangers.remove(request["remove_address"])
        if request["op"] == "group_status":
            return {"members": [], "strangers": list(self.strangers)}
        return {"ok": True}

    def changes(self) -> list[dict[str, Any]]:
        return [r for _, r in self.calls if r["op"] == "change_members"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "db")
    yield s
    s.close()


def controller(store: Store, members: int, admin: FakeAdmin) -> Controller:
    nodes = [NodeAddress(n, HOSTS[n]) for n in range(1, members + 1)]
    machine = ControllerMachine(store, initial_placement(nodes, 8, 3))
    return Controller(1, FakeGroup(machine), machine, 3, admin, 3.0)  # type: ignore[arg-type]


def snapshot(c: Controller) -> tuple[int, dict[int, str], list[int]]:
    p: Placement = c.placement()
    return p.version, dict(p.nodes), list(p.leaving)


def test_a_join_whose_raft_change_fails_leaves_the_map_as_it_was(store: Store) -> None:
    """The member was recorded before its voter was added: when that failed (the HTTP route
    answered 409), the map kept the node anyway."""
    admin = FakeAdmin()
    c = controller(store, 3, admin)
    before = snapshot(c)
    admin.fail_changes = True

    async def main() -> None:
        with pytest.raises(AdminError):
            await c.join(9, "10.0.0.9")

    trio.run(main)
    assert snapshot(c) == before


@pytest.mark.parametrize(
    ("node_id", "host", "why"),
    [
        (1, "10.0.0.99", "already a member at 10.0.0.1"),  # a member's id, another address
        (9, "10.0.0.2", "10.0.0.2 is the address of member 2"),  # another member's address
        (9, "0.0.0.0", "wildcard"),
        (9, "::", "wildcard"),
        (9, "224.0.0.1", "multicast"),
        (9, "255.255.255.255", "broadcast"),
        (9, "not a host", "neither an IP address nor a DNS name"),
        (9, "", "IP address or a DNS name"),
    ],
)
def test_a_refused_join_changes_nothing(store: Store, node_id: int, host: str, why: str) -> None:
    admin = FakeAdmin()
    c = controller(store, 3, admin)
    before = snapshot(c)

    async def main() -> None:
        with pytest.raises(ValueError, match=why):
            await c.join(node_id, host)

    trio.run(main)
    assert snapshot(c) == before
    assert admin.changes() == []  # no voter was added either


def test_a_join_adds_the_voter_first_then_records_and_answers_again_alike(store: Store) -> None:
    admin = FakeAdmin()
    c = controller(store, 3, admin)

    async def main() -> None:
        first = await c.join(4, "10.0.0.4")
        again = await c.join(4, "10.0.0.4")  # its answer was lost: it asks again
        assert first.nodes == again.nodes == {**{n: HOSTS[n] for n in (1, 2, 3)}, 4: "10.0.0.4"}
        assert first.version == again.version

    trio.run(main)
    add = {"op": "change_members", "group": 0, "add": 4, "host": "10.0.0.4"}
    assert admin.changes() == [add, add]


def test_leaves_at_the_same_time_cannot_take_the_cluster_below_its_replicas(
    store: Store,
) -> None:
    """Four members, replicas 3: one of two simultaneous leaves may pass, not both (each read
    the map before the other had changed it)."""
    admin = FakeAdmin()
    c = controller(store, 4, admin)
    outcomes: dict[int, str] = {}

    async def leave(node: int) -> None:
        try:
            await c.leave(node)
            outcomes[node] = "ok"
        except ValueError as e:
            outcomes[node] = str(e)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leave, 3)
            nursery.start_soon(leave, 4)

    trio.run(main)
    refusals = [v for v in outcomes.values() if v != "ok"]
    assert len(outcomes) == 2 and len(refusals) == 1
    assert "cluster.replicas = 3" in refusals[0]
    assert len(c.placement().leaving) == 1


def test_a_forced_leave_goes_below_the_replicas_is_logged_and_never_takes_the_last_member(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    admin = FakeAdmin()
    c = controller(store, 3, admin)

    async def main() -> None:
        with pytest.raises(ValueError, match=r"cluster\.replicas"):
            await c.leave(3)
        with caplog.at_level(logging.WARNING, logger="raftchat.controller"):
            await c.leave(3, force=True)
        await c.leave(2, force=True)
        with pytest.raises(ValueError, match="last member"):
            await c.leave(1, force=True)
        with pytest.raises(ValueError, match="node 9 is not a member"):
            await c.leave(9, force=True)

    trio.run(main)
    assert sorted(c.placement().leaving) == [2, 3]
    forced = [r for r in caplog.records if "by force" in r.getMessage()]
    assert forced and forced[0].levelno == logging.WARNING


def test_a_controller_voter_the_map_does_not_list_is_removed(store: Store) -> None:
    admin = FakeAdmin()
    admin.strangers = ["10.0.0.9:12000"]
    c = controller(store, 3, admin)

    async def main() -> None:
        await c._remove_strangers()

    trio.run(main)
    assert admin.strangers == []
    assert {"op": "change_members", "group": 0, "remove_address": "10.0.0.9:12000"} in (
        admin.changes()
    )


class LeadersAdmin(FakeAdmin):
    """Every slot group led by node 1 (as after node 2 and 3 restarted), node 2 draining."""

    async def __call__(self, node_id: int, request: dict[str, Any]) -> dict[str, Any]:
        if request["op"] == "status":
            self.calls.append((node_id, request))
            groups = [{"group": g, "local": True, "is_leader": node_id == 1} for g in range(9)]
            return {"groups": groups}
        return await super().__call__(node_id, request)


def balance_once(c: Controller, admin: FakeAdmin) -> list[int]:
    """One balancing step; the nodes it handed a leadership to."""

    async def main() -> None:
        placement = c.placement()
        await c._balance_leaders(placement, await c._statuses(placement))

    trio.run(main)
    return [r["to"] for _, r in admin.calls if r["op"] == "transfer_leader"]


def test_the_balancer_moves_no_leadership_to_a_draining_node(store: Store) -> None:
    admin = LeadersAdmin()
    c = controller(store, 3, admin)
    c._draining = lambda: {2}
    transfers = balance_once(c, admin)
    assert transfers and all(to == 3 for to in transfers), transfers


def test_a_settled_round_asks_each_node_once(store: Store) -> None:
    """Leaderships come from the nodes' statuses, which the orphan sweep reads anyway: asking
    each group's members in turn cost up to three calls per group every second."""
    admin = LeadersAdmin()
    c = controller(store, 3, admin)
    assert trio.run(c.reconcile_once)
    asked = sorted((n, r["op"], r.get("group")) for n, r in admin.calls if "status" in r["op"])
    each_node = [(n, "status", None) for n in (1, 2, 3)]
    assert asked == sorted([(1, "group_status", 0), *each_node])
    assert any(r["op"] == "transfer_leader" for _, r in admin.calls)  # node 1 led them all


class UnreachableAdmin(LeadersAdmin):
    """Node 2 does not answer."""

    async def __call__(self, node_id: int, request: dict[str, Any]) -> dict[str, Any]:
        if node_id == 2 and request["op"] == "status":
            raise AdminError("node 2 unreachable")
        return await super().__call__(node_id, request)


def test_the_balancer_gives_no_leadership_to_a_node_that_did_not_answer(store: Store) -> None:
    admin = UnreachableAdmin()
    transfers = balance_once(controller(store, 3, admin), admin)
    assert transfers and all(to == 3 for to in transfers), transfers


class RestartedJoinerAdmin(FakeAdmin):
    """Group 1's Raft voters are 1, 2, 3 and 4 (node 4 was added), its map lists 1, 2, 3: node
    4 restarted before it was recorded, and a node opens only the groups its map lists."""

    def __init__(self, leader: int | None = 1) -> None:
        super().__init__()
        self.hosted: set[int] = {1, 2, 3}
        self.leader = leader

    async def __call__(self, node_id: int, request: dict[str, Any]) -> dict[str, Any]:
        if request["op"] == "host_group":
            self.hosted.add(node_id)
        if request["op"] == "group_status":
            self.calls.append((node_id, request))
            if node_id not in self.hosted:
                raise AdminError(f"node {node_id}: no replica of group 1 here")
            return {"is_leader": node_id == self.leader, "members": [1, 2, 3, 4],
                    "commit_index": 7, "raft_applied": 7}  # fmt: skip
        return await super().__call__(node_id, request)


def test_a_voter_added_but_not_recorded_is_hosted_again_after_its_restart(store: Store) -> None:
    """Without hosting it again, the reconciler asked node 4 for its replica's status for
    ever ("no replica of group 1 here"), and the group kept a voter that never answered: with
    one more member gone, it had no majority (a chaos run's group without a leader)."""
    admin = RestartedJoinerAdmin()
    c = controller(store, 4, admin)
    group = 1
    before = list(c.placement().groups[group])
    assert 4 not in before

    async def main() -> None:
        await c._step_inner(group, [*before, 4])

    trio.run(main)
    assert 4 in admin.hosted
    assert 4 in c.placement().groups[group]


def test_a_group_without_a_leader_gets_its_unrecorded_voter_back(store: Store) -> None:
    """The same, with no leader to ask (node 2 gone too, two of four voters left): the voter
    is hosted again from what a follower knows, so that the group can elect."""
    admin = RestartedJoinerAdmin(leader=None)
    c = controller(store, 4, admin)
    before = list(c.placement().groups[1])

    async def main() -> None:
        await c._step_inner(1, [*before, 4])

    trio.run(main)
    assert 4 in admin.hosted
    assert 4 not in c.placement().groups[1]  # recorded once caught up, under a leader


# --- zones ------------------------------------------------------------------------------------


def test_a_join_records_the_zone_and_the_reconciler_spreads_over_it(store: Store) -> None:
    """Nodes 1-3 on machine m1 (every group on it: 3 replicas of 3), node 4 joins on m2: each
    group is to have a replica on m2, which only node 4 is on."""
    admin = FakeAdmin()
    machine = ControllerMachine(
        store, initial_placement([NodeAddress(n, HOSTS[n], "m1") for n in (1, 2, 3)], 8, 3)
    )
    c = Controller(1, FakeGroup(machine), machine, 3, admin, 3.0)  # type: ignore[arg-type]

    async def main() -> None:
        placement = await c.join(4, "10.0.0.4", "m2")
        assert placement.zones == {1: "m1", 2: "m1", 3: "m1", 4: "m2"}
        again = await c.join(4, "10.0.0.4", "m2")  # its answer was lost: nothing changes
        assert again.version == placement.version

    trio.run(main)
    desired = c.desired(c.placement())
    assert all(4 in members and len(members) == 3 for members in desired.values())


@pytest.mark.parametrize(
    ("zone", "why"), [("a b", "A-Z a-z 0-9"), ("z" * 65, "1 to 64"), ("m1,m2", "A-Z")]
)
def test_a_join_with_a_bad_zone_changes_nothing(store: Store, zone: str, why: str) -> None:
    admin = FakeAdmin()
    c = controller(store, 3, admin)
    before = c.placement()

    async def main() -> None:
        with pytest.raises(ValueError, match=why):
            await c.join(4, "10.0.0.4", zone)

    trio.run(main)
    assert c.placement() == before and admin.changes() == []


def test_a_member_records_its_zone(store: Store) -> None:
    admin = FakeAdmin()
    c = controller(store, 3, admin)

    async def main() -> None:
        v0 = c.placement().version
        p = await c.set_zone(2, "m1")
        assert p.zones == {2: "m1"} and p.version == v0 + 1
        assert (await c.set_zone(2, "m1")).version == v0 + 1  # already recorded: no change
        assert (await c.set_zone(2, "m7")).zones == {2: "m7"}  # it moved
        assert (await c.set_zone(2, "")).zones == {}  # it names none any more
        with pytest.raises(ValueError, match="node 9 is not a member"):
            await c.set_zone(9, "m1")
        with pytest.raises(ValueError, match="A-Z a-z 0-9"):
            await c.set_zone(2, "m 1")

    trio.run(main)
    assert c.placement().zones == {}


def test_a_node_that_left_takes_its_zone_along(store: Store) -> None:
    admin = FakeAdmin()
    nodes = [NodeAddress(n, HOSTS[n], f"m{n}") for n in (1, 2, 3, 4)]
    machine = ControllerMachine(store, initial_placement(nodes, 8, 3))
    c = Controller(1, FakeGroup(machine), machine, 3, admin, 3.0)  # type: ignore[arg-type]

    async def main() -> None:
        await c.leave(4)

        def emptied(p: Placement) -> None:
            for members in p.groups.values():
                if 4 in members:
                    members.remove(4)

        await c.update(emptied)  # as the reconciler leaves it once its replicas moved
        await c._retire_drained(c.placement())

    trio.run(main)
    assert 4 not in c.placement().nodes and c.placement().zones == {1: "m1", 2: "m2", 3: "m3"}
