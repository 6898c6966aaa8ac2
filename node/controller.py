"""The controller group: one Raft group on every node that holds the cluster map (members, the
slot table, and which nodes replicate each slot group), and the reconciler that, on the
controller's leader, moves slot-group replicas until the map matches what membership wants.

The placement in the controller always records actual Raft membership: the reconciler changes a
slot group's membership first (one node at a time, adding before removing, so a group never has
fewer than its replicas while data moves) and records each change afterwards. A join does the
same with the controller group itself: the new node becomes a voter first and a member of the
map after, so a join that fails leaves the map as it was (a voter whose addition timed out but
went through later is removed again by the reconciler, ``_remove_strangers``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from cluster.hosts import host_problem
from cluster.placement import Placement, desired_replicas, from_json, to_json, zone_problem
from proto.raftchat.peer.v1 import peer_pb2 as pb

from .groups.local import LocalGroup, ProposalError
from .log import get_logger
from .storage import Store

log = get_logger("controller")

CONTROLLER_GROUP = 0
PLACEMENT_KEY = b"placement"


def stored_members(data_dir: Path) -> dict[int, str] | None:
    """The members (id -> host) of the cluster map stored in a node's data directory; None
    when it stores none (a map that never changed is recomputed from the config instead)."""
    db = data_dir / "controller" / "db"
    if not db.exists():
        return None
    store = Store(db)
    try:
        raw = store.get_state(PLACEMENT_KEY)
    finally:
        store.close()
    return None if raw is None else from_json(json.loads(raw)).nodes


AdminCall = Callable[[int, dict[str, Any]], Awaitable[dict[str, Any]]]
"""(node id, admin request) -> reply; raises on failure."""


class ControllerMachine:
    """Applies compare-and-set updates of the placement, stored in the controller's RocksDB."""

    def __init__(self, store: Store, genesis: Placement) -> None:
        self.store = store
        self.genesis = genesis
        self.on_change: Callable[[Placement], None] | None = None

    def current(self) -> Placement:
        raw = self.store.get_state(PLACEMENT_KEY)
        return self.genesis if raw is None else from_json(json.loads(raw))

    def applied_index(self) -> int:
        return self.store.applied_index()

    def checkpoint(self, path: str) -> None:
        self.store.checkpoint(path)

    def install(self, path: str) -> None:
        self.store.install(path)
        if self.on_change is not None:
            self.on_change(self.current())

    def apply(self, index: int, command: bytes) -> bytes:
        if index <= self.store.applied_index():
            return b""
        cmd = pb.Command.FromString(command)
        wb = self.store.batch()
        result: dict[str, Any] = {"ok": True}
        changed: Placement | None = None
        if cmd.WhichOneof("body") == "placement":
            doc = json.loads(cmd.placement.document)
            current = self.current()
            if doc["base_version"] != current.version:
                result = {"ok": False, "reason": "conflict", "version": current.version}
            else:
                changed = from_json(doc["placement"])
                changed.version = current.version + 1
                wb.put_state(PLACEMENT_KEY, json.dumps(to_json(changed)).encode())
                result = {"ok": True, "version": changed.version}
        wb.set_applied(index)
        self.store.write(wb)
        if changed is not None and self.on_change is not None:
            self.on_change(changed)
        return json.dumps(result).encode()


class Controller:
    def __init__(
        self,
        node_id: int,
        group: LocalGroup,
        machine: ControllerMachine,
        replicas: int,
        admin: AdminCall,
        proposal_timeout_s: float,
        draining: Callable[[], set[int]] = set,
    ) -> None:
        self.node_id = node_id
        self._draining = draining
        """Nodes leaving service (``node/drain.py``): the balancer gives them no leadership."""
        self.group = group
        self.machine = machine
        self.replicas = replicas
        self._admin = admin
        self._timeout_s = proposal_timeout_s
        self._lock = trio.Lock()
        self.rounds = 0

    def placement(self) -> Placement:
        return self.machine.current()

    async def update(self, mutate: Callable[[Placement], None]) -> Placement:
        """Apply ``mutate`` to a copy of the current placement and commit it (controller leader
        only); retried on a concurrent change. ``mutate`` may raise ValueError to refuse the
        change as the newest map stands: it sees that map, so checks made there hold."""
        async with self._lock:
            return await self._update(mutate)

    async def _update(self, mutate: Callable[[Placement], None]) -> Placement:
        """``update`` for a caller that holds the lock."""
        for _ in range(5):
            base = self.placement()
            new = from_json(to_json(base))
            mutate(new)
            doc = {"base_version": base.version, "placement": to_json(new)}
            update = pb.PlacementUpdate(document=json.dumps(doc).encode())
            raw = await self.group.propose(
                pb.Command(time_ms=int(time.time() * 1000), placement=update),
                self._timeout_s,
            )
            if json.loads(raw)["ok"]:
                return self.placement()
        raise ProposalError("unknown", "placement kept changing")

    # --- membership requests (on the controller leader) ---------------------------------------

    async def join(self, node_id: int, host: str, zone: str = "") -> Placement:
        """Admit ``node_id`` at ``host`` (in ``zone``): a voter of the controller group first,
        then a member of the map. The caller has checked that the request is the node's own
        (its signed call came from ``host``); a refusal here (ValueError) changes nothing."""
        problem = host_problem(host)
        if problem is not None:
            raise ValueError(f"node {node_id} cannot join at {host}: {problem}")
        problem = zone_problem(zone)
        if problem is not None:
            raise ValueError(f"node {node_id} cannot join: {problem}")
        async with self._lock:
            _check_join(self.placement(), node_id, host)
            # The new node starts its replica with the others as partners once it has the
            # map; the leader (this node) adds it, and only then records it. Both steps are
            # idempotent: a node admitted before whose answer was lost gets the same answer.
            await self._admin(
                self.node_id, {"op": "change_members", "group": 0, "add": node_id, "host": host}
            )

            def add(p: Placement) -> None:
                _check_join(p, node_id, host)
                p.nodes[node_id] = host
                p.set_zone(node_id, zone)

            placement = self.placement()
            if placement.nodes.get(node_id) != host or placement.zones.get(node_id, "") != zone:
                placement = await self._update(add)
        log.info("node joined", node_id=node_id, host=host, zone=zone)
        return placement

    async def set_zone(self, node_id: int, zone: str) -> Placement:
        """Record a member's zone (its own request: the caller has checked that), for a zone
        the map does not have yet: a node that names one after its cluster was created, or
        moved to another. The reconciler then spreads the groups again."""
        problem = zone_problem(zone)
        if problem is not None:
            raise ValueError(f"node {node_id}: {problem}")

        def record(p: Placement) -> None:
            if node_id not in p.nodes:
                raise ValueError(f"node {node_id} is not a member")
            p.set_zone(node_id, zone)

        placement = self.placement()
        if node_id in placement.nodes and placement.zones.get(node_id, "") == zone:
            return placement
        placement = await self.update(record)
        log.info("zone recorded", node_id=node_id, zone=zone)
        return placement

    async def leave(self, node_id: int, *, force: bool = False) -> None:
        """Mark ``node_id`` as leaving: the reconciler moves its replicas away, then removes it.

        Refused when fewer than ``cluster.replicas`` members would stay (or fewer than there
        are, in a cluster that is already smaller): shrinking below the replica count silently
        leaves every slot group one failure from unavailability (the chaos suite found repeated
        leaves taking a 5-node cluster down to 2 members); an operator replacing a node joins
        the new one first. ``force`` overrides that, for a cluster that must lose a dead node
        without a replacement, and is logged as a warning; it never removes the last member.
        The check runs on the newest map inside the update, so leaves asked for at the same
        time cannot pass it together."""
        forced: list[int] = []

        def mark(p: Placement) -> None:
            forced.clear()
            if node_id not in p.nodes:
                raise ValueError(f"node {node_id} is not a member")
            if node_id in p.leaving:
                return
            active = [n for n in p.nodes if n not in p.leaving]
            staying = [n for n in active if n != node_id]
            if len(staying) < min(self.replicas, len(active)):
                if not force:
                    raise ValueError(
                        f"node {node_id} cannot leave: {len(staying)} member(s) would stay, "
                        f"fewer than cluster.replicas = {self.replicas}; join a replacement "
                        "first, or force it"
                    )
                if not staying:
                    raise ValueError(f"node {node_id} is the last member: it cannot leave")
                forced.append(len(staying))
            p.leaving.append(node_id)

        await self.update(mark)
        if forced:
            log.warning(
                "node leaving by force: fewer members than cluster.replicas will stay",
                node_id=node_id,
                staying=forced[0],
                replicas=self.replicas,
            )
        else:
            log.info("node leaving", node_id=node_id)

    # --- the reconciler -----------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await trio.sleep(1.0)  # a periodic sweep: membership and health change without events
            if not self.group.is_leader():
                continue
            try:
                await self.reconcile_once()
            except Exception as e:
                log.warning("reconcile round failed", error=repr(e))

    def desired(self, placement: Placement) -> dict[int, list[int]]:
        active = [n for n in sorted(placement.nodes) if n not in placement.leaving]
        return desired_replicas(placement.groups, active, self.replicas, placement.zones)

    async def reconcile_once(self) -> bool:
        """One step for every group that is not where it should be; True when all were."""
        self.rounds += 1
        placement = self.placement()
        desired = self.desired(placement)
        moves = {g: d for g, d in desired.items() if sorted(d) != sorted(placement.groups[g])}
        if moves:
            async with trio.open_nursery() as nursery:
                for group, target in moves.items():
                    nursery.start_soon(self._step, group, target)
            return False
        await self._retire_drained(placement)
        await self._remove_strangers()
        statuses = await self._statuses(placement)
        await self._sweep_orphans(placement, statuses)
        await self._balance_leaders(placement, statuses)
        return True

    async def _statuses(self, placement: Placement) -> dict[int, dict[str, Any]]:
        """Every reachable node's status. A settled round asks each node once and reads both
        orphans and leaderships from the answers: asking every group's members in turn cost
        the controller's leader up to three calls per group per second."""
        out: dict[int, dict[str, Any]] = {}
        for node in sorted(placement.nodes):
            try:
                out[node] = await self._admin(node, {"op": "status"})
            except Exception:
                continue
        return out

    async def _step(self, group: int, target: list[int]) -> None:
        # One group's trouble (a node that never came up, say) must not stall the others.
        try:
            await self._step_inner(group, target)
        except Exception as e:
            log.warning("reconcile step failed", group=group, error=repr(e))

    async def _step_inner(self, group: int, target: list[int]) -> None:
        current = list(self.placement().groups[group])
        leader = await self._group_leader(group, current)
        if leader is None:
            await self._host_unrecorded_voters(group, current, target)
            return
        st = await self._admin(leader, {"op": "group_status", "group": group, "committed": True})
        actual = list(st["members"])
        # The map must say what Raft has. An interrupted step can leave a voter the map does not
        # record (kept if wanted and caught up, else removed), or a record without a voter.
        for node in [n for n in actual if n not in current]:
            if node in target:
                # The node may have restarted since it was added: it opens only the groups its
                # map lists, and this one it does not, so it has no replica to catch up with
                # (and the group counts a voter that never answers). Hosting is idempotent.
                await self._admin(node, {"op": "host_group", "group": group, "members": actual})
                await self._record_when_caught_up(group, node, st["commit_index"])
            else:
                await self._admin(leader, {"op": "change_members", "group": group, "remove": node})
                await self._drop(node, group)
            return
        for node in [n for n in current if n not in actual]:

            def unrecord(p: Placement, node: int = node) -> None:
                if node in p.groups[group]:
                    p.groups[group].remove(node)

            await self.update(unrecord)
            return
        add = [n for n in target if n not in current]
        if add:
            await self._add(group, current, leader, add[0])
            return
        remove = [n for n in current if n not in target]
        if remove:
            await self._remove(group, current, leader, remove[0])

    async def _host_unrecorded_voters(
        self, group: int, current: list[int], target: list[int]
    ) -> None:
        """A group without a leader may lack a voter that its map does not list: added, then
        restarted before it was recorded, so that it did not open the group. Without it the
        group may have no majority to elect a leader with; hosting it again (idempotent) lets
        it vote. The voters are as any reachable replica sees them."""
        for n in current:
            try:
                st = await self._admin(n, {"op": "group_status", "group": group})
            except Exception:
                continue
            voters = [int(v) for v in st.get("members", [])]
            for v in voters:
                if v not in current and v in target:
                    host = {"op": "host_group", "group": group, "members": voters}
                    with contextlib.suppress(Exception):  # down: the next round tries again
                        await self._admin(v, host)
            return

    async def _group_leader(self, group: int, members: list[int]) -> int | None:
        for n in members:
            try:
                st = await self._admin(n, {"op": "group_status", "group": group})
            except Exception:
                continue
            if st.get("is_leader"):
                return n
        return None

    async def _add(self, group: int, current: list[int], leader: int, node: int) -> None:
        log.info("adding replica", group=group, node=node)
        await self._admin(node, {"op": "host_group", "group": group, "members": [*current, node]})
        await self._admin(leader, {"op": "change_members", "group": group, "add": node})
        lead = await self._admin(leader, {"op": "group_status", "group": group})
        await self._record_when_caught_up(group, node, lead["commit_index"])

    async def _record_when_caught_up(self, group: int, node: int, commit_index: int) -> None:
        """Record a replica only once it has caught up, so that a map entry means "has data"."""
        with trio.fail_after(120):
            while True:
                st = await self._admin(node, {"op": "group_status", "group": group})
                if st["raft_applied"] >= commit_index:
                    break
                await trio.sleep(0.2)  # catching up (log or snapshot) emits no event we can see

        def record(p: Placement) -> None:
            if node not in p.groups[group]:
                p.groups[group].append(node)

        await self.update(record)

    async def _remove(self, group: int, current: list[int], leader: int, node: int) -> None:
        log.info("removing replica", group=group, node=node)
        if node == leader:
            # pysyncobj picks the most caught-up connected member.
            await self._admin(node, {"op": "transfer_leader", "group": group})
            return  # next round finds the new leader and removes the old one
        await self._admin(leader, {"op": "change_members", "group": group, "remove": node})

        def record(p: Placement) -> None:
            if node in p.groups[group]:
                p.groups[group].remove(node)

        await self.update(record)
        await self._drop(node, group)

    async def _drop(self, node: int, group: int) -> None:
        try:
            await self._admin(node, {"op": "drop_group", "group": group})
        except Exception as e:  # a dead node: the orphan sweep retries once it is back
            log.info("could not tell the old replica to drop its data", node=node, error=repr(e))

    async def _sweep_orphans(
        self, placement: Placement, statuses: dict[int, dict[str, Any]]
    ) -> None:
        """Replicas a node still runs for groups the map no longer gives it (it was down when
        they moved): they elect nothing and would mislead its routing, so they go."""
        for node, st in statuses.items():
            for g in st["groups"]:
                group = g["group"]
                if group and g["local"] and node not in placement.groups.get(group, []):
                    log.info("dropping an orphan replica", node=node, group=group)
                    await self._drop(node, group)

    async def _remove_strangers(self) -> None:
        """Controller voters that the map does not list: a join whose voter change timed out
        (so it was not recorded) and committed later. Under the lock, so never a join's own
        voter between its change and its record."""
        async with self._lock:
            st = await self._admin(self.node_id, {"op": "group_status", "group": 0})
            for address in st.get("strangers", []):
                log.warning("removing a controller voter that is not a member", address=address)
                await self._admin(
                    self.node_id, {"op": "change_members", "group": 0, "remove_address": address}
                )

    async def _retire_drained(self, placement: Placement) -> None:
        for node in sorted(placement.leaving):
            if any(node in m for m in placement.groups.values()):
                continue
            if node == self.node_id:
                # A node cannot remove itself from a Raft group: hand the controller to a
                # remaining node, whose reconciler then retires this one.
                others = [n for n in sorted(placement.nodes) if n not in placement.leaving]
                if others:
                    await self._admin(self.node_id, {"op": "transfer_leader", "group": 0})
                return
            await self._admin(self.node_id, {"op": "change_members", "group": 0, "remove": node})

            def forget(p: Placement, node: int = node) -> None:
                p.nodes.pop(node, None)
                p.set_zone(node, "")
                p.leaving.remove(node)

            await self.update(forget)
            log.info("node left the cluster", node_id=node)

    async def _balance_leaders(
        self, placement: Placement, statuses: dict[int, dict[str, Any]]
    ) -> None:
        """Move one leadership from the busiest to the idlest node when they differ by > 1."""
        draining = self._draining()
        # A node that did not answer is not the idlest, only unknown: it gets no leadership.
        leaders: dict[int, list[int]] = {
            n: []
            for n in placement.nodes
            if n not in placement.leaving and n not in draining and n in statuses
        }
        for group, members in placement.groups.items():
            leader = _leader_in(statuses, group, members)
            if leader in leaders:
                leaders[leader].append(group)
        if len(leaders) < 2:
            return
        busiest = max(leaders, key=lambda n: len(leaders[n]))
        idlest = min(leaders, key=lambda n: len(leaders[n]))
        if len(leaders[busiest]) - len(leaders[idlest]) <= 1:
            return
        for group in leaders[busiest]:
            if idlest in placement.groups[group]:
                await self._admin(busiest, {"op": "transfer_leader", "group": group, "to": idlest})
                return


def _check_join(placement: Placement, node_id: int, host: str) -> None:
    """Refuse (ValueError) a join that would change or duplicate a member's address."""
    known = placement.nodes.get(node_id)
    if known is not None and known != host:
        raise ValueError(f"node {node_id} is already a member at {known}")
    if node_id in placement.leaving:
        raise ValueError(f"node {node_id} is leaving the cluster; it may join again once gone")
    holder = next((n for n, h in placement.nodes.items() if h == host and n != node_id), None)
    if holder is not None:
        raise ValueError(f"{host} is the address of member {holder}")


def _leader_in(statuses: dict[int, dict[str, Any]], group: int, members: list[int]) -> int | None:
    """The first of ``members`` whose status says it leads ``group``."""
    for n in members:
        for g in statuses.get(n, {}).get("groups", []):
            if g.get("group") == group and g.get("is_leader"):
                return n
    return None
