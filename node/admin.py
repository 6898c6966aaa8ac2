"""Cluster administration between nodes, as JSON documents over the peer ``Admin`` RPC.

Operations (``op``):

* ``join`` {node_id, host, zone}: a node asks to be admitted, with its own signed call (its
  ``cluster.join``); served by the controller leader, to which the member it asked forwards it.
  Only that call can admit a node: it proves the cluster password (the peer credential), and it
  must come from ``host`` (``cluster/hosts.py``);
* ``zone`` {node_id, zone}: a member asks to have its ``node.zone`` recorded, with its own
  signed call from its address in the map, checked as a join's; served by the controller
  leader;
* ``leave`` {node_id, force}: membership; served by the controller leader (any node forwards it);
* ``status``: this node's view (``Router.status``);
* ``group_status`` {group}: members, leader, commit and applied indexes of a local replica, and
  the addresses of voters the map does not list (``strangers``);
* ``host_group`` {group, members}: start a (possibly empty) replica of a slot group here;
* ``drop_group`` {group}: stop this node's replica of a group and delete its data;
* ``change_members`` {group, add [host] | remove | remove_address}: on the group's leader, one
  Raft membership change (``host``: of a node the map does not list yet);
* ``transfer_leader`` {group, to}: on the group's leader, hand leadership to a caught-up member;
* ``drain``: drain this node, then stop it (``node/drain.py``); answers once the drain started;
* ``peer_draining`` {node_id}: that node is draining: hand it out to no client.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio
from pysyncobj import FAIL_REASON

from cluster.bridge import caller_host
from cluster.grpc_client import GrpcCallError, GrpcClients
from cluster.hosts import IPAddress, host_problem, parse_ip, source_matches
from cluster.placement import Placement
from proto.raftchat.peer.v1 import peer_pb2 as pb

from .groups.local import LocalGroup, Proposal, ProposalError
from .log import get_logger

if TYPE_CHECKING:
    from .controller import Controller

log = get_logger("admin")

RAFT_CALL_TIMEOUT_S = 20.0


FAILED = "failed"
"""The operation did not happen (or its outcome is unknown); asking again may work."""
REFUSED = "refused"
"""Refused as asked; the state is unchanged and asking again will not help."""
UNREACHABLE = "unreachable"
"""The node could not be asked."""
NOT_CONTROLLER_LEADER = "not_controller_leader"
"""A membership request reached a node that does not lead the controller (a stale view)."""


class AdminError(Exception):
    """An admin operation that failed; ``code`` says how (one of the constants above), and
    travels with the answer between nodes, so that callers decide on it, not on the text."""

    code = FAILED

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class AdminRefused(AdminError):
    """The operation was refused as asked (a leave below ``cluster.replicas``, a join at
    another member's address): the state is unchanged, and asking again will not help."""

    code = REFUSED


def code_of(reply: dict[str, Any]) -> str:
    """The code of an error answer. Nodes of an older revision send no ``code``, only
    ``refused``."""
    return str(reply.get("code") or (REFUSED if reply.get("refused") else FAILED))


def error_of(node_id: int, reply: dict[str, Any]) -> AdminError:
    """The error an answer carries."""
    code = code_of(reply)
    error = AdminRefused if code == REFUSED else AdminError
    return error(f"node {node_id}: {reply['error']}", code)


class ClusterView(Protocol):
    """What admin operations read of the node's view of the cluster (``node/router.py``)."""

    placement: Placement
    local: dict[int, LocalGroup]

    def leader_of(self, group: int) -> int | None: ...
    def peer_target(self, node_id: int) -> str: ...
    def status(self) -> dict[str, Any]: ...


class GroupHost(Protocol):
    """This node's replicas, as admin operations start, stop and address them
    (``node/replicas.py``)."""

    def raft_address(self, node_id: int, group: int) -> str: ...
    def raft_address_at(self, host: str, group: int) -> str: ...
    def node_of_address(self, address: str) -> int | None: ...
    def on_driver(self, work: Callable[[], Any]) -> concurrent.futures.Future[Any]: ...
    async def open_group(self, group: int, members: list[int]) -> None: ...
    async def drop_group(self, group: int) -> None: ...


class Admin:
    def __init__(
        self,
        node_id: int,
        cluster: ClusterView,
        clients: GrpcClients,
        replicas: GroupHost,
        controller: Callable[[], Controller | None],
        *,
        cluster_id: Callable[[], str | None],
        peer_draining: Callable[[int], None],
        start_drain: Callable[[], None],
    ) -> None:
        """``controller``: this node's controller, once it has one (it is built with this
        object's ``call``); ``cluster_id``: the id its data directory records; ``peer_draining``:
        stop handing out a node to clients (``node/client_routes.py``); ``start_drain``: drain
        this node, then stop it, in the background."""
        self.node_id = node_id
        self._cluster = cluster
        self._clients = clients
        self._replicas = replicas
        self._controller = controller
        self._cluster_id = cluster_id
        self._peer_draining = peer_draining
        self._start_drain = start_drain

    # --- calling --------------------------------------------------------------------------------

    async def call(self, node_id: int, request: dict[str, Any]) -> dict[str, Any]:
        """Run an admin operation on ``node_id`` (locally when it is this node)."""
        if node_id == self.node_id:
            reply = await self.handle(request)
        else:
            try:
                target = self._cluster.peer_target(node_id)
                raw = await self._clients.get(target).call(
                    "Admin", pb.AdminRequest(request=json.dumps(request).encode()), timeout_s=30.0
                )
            except (GrpcCallError, KeyError) as e:
                raise AdminError(f"node {node_id} unreachable: {e}", UNREACHABLE) from None
            reply = json.loads(raw.reply)
        if "error" in reply:
            raise error_of(node_id, reply)
        return reply

    async def on_controller_leader(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send a membership request to the controller's leader, wherever it is."""
        deadline = trio.current_time() + 20
        while True:
            leader = self._cluster.leader_of(0)
            if leader is not None:
                try:
                    return await self.call(leader, request)
                except AdminError as e:
                    # A stale view (the leader moved or just died) clears up with the election.
                    retryable = e.code in (NOT_CONTROLLER_LEADER, UNREACHABLE)
                    if not retryable or trio.current_time() > deadline:
                        raise
            if trio.current_time() > deadline:
                raise AdminError("no controller leader")
            await trio.sleep(0.2)  # an election in progress

    # --- serving --------------------------------------------------------------------------------

    async def rpc(self, req: pb.AdminRequest) -> pb.AdminReply:
        reply = await self.handle(json.loads(req.request), caller=caller_host())
        return pb.AdminReply(reply=json.dumps(reply).encode())

    async def handle(self, request: dict[str, Any], caller: str | None = None) -> dict[str, Any]:
        """``caller``: the address of the peer whose signed call this is; None for this node's
        own requests."""
        op = request.get("op")
        if op == "join":
            return await self._answer(self._join(request, caller))
        if op == "zone":
            return await self._answer(self._zone(request, caller))
        handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = getattr(
            self, f"_op_{op}", None
        )
        if handler is None:
            return {"error": f"unknown admin op {op!r}"}
        return await self._answer(handler(request))

    @staticmethod
    async def _answer(work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await work
        except (AdminRefused, ValueError) as e:  # ValueError: the controller's refusals
            return {"error": str(e), "code": REFUSED, "refused": True}
        except AdminError as e:  # worth asking again
            return {"error": str(e), "code": e.code}
        except (KeyError, ProposalError) as e:
            return {"error": str(e), "code": FAILED}

    async def _op_status(self, r: dict[str, Any]) -> dict[str, Any]:
        return self._cluster.status()

    async def _forward(self, r: dict[str, Any]) -> dict[str, Any] | None:
        """Membership requests reaching a node that does not lead the controller go on to the
        leader, once (a stale view then fails and the caller retries)."""
        controller = self._controller()
        if controller is not None and controller.group.is_leader():
            return None
        if r.get("forwarded"):
            raise AdminError("not the controller leader", NOT_CONTROLLER_LEADER)
        return await self.on_controller_leader({**r, "forwarded": True})

    async def _join(self, r: dict[str, Any], caller: str | None) -> dict[str, Any]:
        """Admit the node whose signed call this is. The member it called checks that the call
        came from the host it names; a forwarded request must come from a member."""
        node_id, host, zone = _node_id(r), str(r["host"]), _zone(r)
        problem = host_problem(host)
        if problem is not None:
            raise ValueError(f"node {node_id} cannot join at {host}: {problem}")
        await self._check_own_call(r, caller, node_id, host, "join")
        forwarded = await self._forward(r)
        if forwarded is not None:
            return forwarded
        controller = self._controller_leader()
        placement = await controller.join(node_id, host, zone)
        from cluster.placement import to_json

        # The joining node records the cluster's id with its data (node/identity.py).
        return {
            "placement": to_json(placement),
            "cluster_id": self._cluster_id(),
        }

    async def _zone(self, r: dict[str, Any], caller: str | None) -> dict[str, Any]:
        """Record the zone of the member whose signed call this is."""
        node_id, zone = _node_id(r), _zone(r)
        host = self._cluster.placement.nodes.get(node_id)
        if host is None:
            raise ValueError(f"node {node_id} is not a member")
        await self._check_own_call(r, caller, node_id, host, "zone")
        forwarded = await self._forward(r)
        if forwarded is not None:
            return forwarded
        placement = await self._controller_leader().set_zone(node_id, zone)
        return {"ok": True, "version": placement.version}

    async def _check_own_call(
        self, r: dict[str, Any], caller: str | None, node_id: int, host: str, what: str
    ) -> None:
        """Refuse (ValueError) a request about ``node_id`` at ``host`` that is not that node's
        own signed call: a direct one must come from ``host``, a forwarded one from a member.
        ``caller`` None: this node's own request."""
        if caller is None:
            return
        if r.get("forwarded"):
            if not await self._from_member(caller):
                raise ValueError(f"a forwarded {what} must come from a member, not {caller}")
        elif not source_matches(await _addresses(host), caller):
            log.warning(
                f"{what} refused: the call did not come from the address it names",
                node_id=node_id,
                host=host,
                caller=caller,
            )
            if what == "join":
                raise ValueError(
                    f"node {node_id} asks to join at {host}, but its call came from {caller}: "
                    "a node joins at the address its own connections come from (behind NAT, "
                    "or with several addresses, set node.host to the one the members see)"
                )
            raise ValueError(
                f"the {what} of node {node_id} (at {host}) can only be asked by that node; "
                f"this call came from {caller}"
            )

    async def _op_leave(self, r: dict[str, Any]) -> dict[str, Any]:
        forwarded = await self._forward(r)
        if forwarded is not None:
            return forwarded
        await self._controller_leader().leave(int(r["node_id"]), force=bool(r.get("force")))
        return {"ok": True}

    async def _from_member(self, caller: str) -> bool:
        for host in self._cluster.placement.nodes.values():
            if source_matches(await _addresses(host), caller):
                return True
        return False

    def _controller_leader(self) -> Controller:
        controller = self._controller()
        if controller is None or not controller.group.is_leader():
            raise AdminError("not the controller leader", NOT_CONTROLLER_LEADER)
        return controller

    def _local(self, group: int) -> Any:
        local = self._cluster.local.get(group)
        if local is None:
            raise AdminError(f"no replica of group {group} here")
        return local

    async def _op_group_status(self, r: dict[str, Any]) -> dict[str, Any]:
        local = self._local(int(r["group"]))
        if r.get("committed") and local.is_leader():
            # The members as committed, not as appended (``_op_change_members``): what the
            # reconciler acts on before it records, unrecords or deletes a replica.
            await _committed(local, local.group_id)
        view = local.view
        addresses = list(view.members)
        members = [self._replicas.node_of_address(a) for a in addresses]
        members.append(self.node_id)
        return {
            "group": local.group_id,
            "members": sorted(m for m in members if m is not None),
            "strangers": sorted(a for a, m in zip(addresses, members, strict=False) if m is None),
            "is_leader": local.is_leader(),
            "leader": local.leader_id(),
            "commit_index": view.commit_index,
            "raft_applied": view.applied_index,
        }

    async def _op_drain(self, r: dict[str, Any]) -> dict[str, Any]:
        self._start_drain()
        return {"ok": True, "node_id": self.node_id}

    async def _op_peer_draining(self, r: dict[str, Any]) -> dict[str, Any]:
        node_id = int(r["node_id"])
        if node_id not in self._cluster.placement.nodes:
            raise AdminRefused(f"node {node_id} is not a member")
        self._peer_draining(node_id)
        log.info("a node is draining: no longer handed out to clients", node_id=node_id)
        return {"ok": True}

    async def _op_host_group(self, r: dict[str, Any]) -> dict[str, Any]:
        group = int(r["group"])
        if group not in self._cluster.local:
            await self._replicas.open_group(group, [int(n) for n in r["members"]])
        return {"ok": True}

    async def _op_drop_group(self, r: dict[str, Any]) -> dict[str, Any]:
        await self._replicas.drop_group(int(r["group"]))
        return {"ok": True}

    async def _op_change_members(self, r: dict[str, Any]) -> dict[str, Any]:
        group = int(r["group"])
        local = self._local(group)
        if not local.is_leader():
            raise AdminError(f"not the leader of group {group}")
        # pysyncobj applies a membership change to its member list when the entry is appended,
        # not when it commits: a removal a former leader appended but never committed looks
        # done. Committing a no-op first commits whatever this leader holds before it, so the
        # list read after it is the committed membership ("already" is then true).
        await _committed(local, group)
        current = set(local.view.members)
        if "add" in r:
            node_id, method = int(r["add"]), local.raft.addNodeToCluster
            # A node the map does not list yet (a join) comes with its host.
            host = r.get("host")
            address = (
                self._replicas.raft_address(node_id, group)
                if host is None
                else self._replicas.raft_address_at(str(host), group)
            )
            # The leader itself is no "other node", but it is a member all the same (a join of
            # the controller leader's own id at its own address is as idempotent as any other).
            if address in current or node_id == self.node_id:
                return {"ok": True, "already": True}
        else:
            method = local.raft.removeNodeFromCluster
            if "remove_address" in r:
                address = str(r["remove_address"])
            else:
                address = self._replicas.raft_address(int(r["remove"]), group)
            if address not in current:
                return {"ok": True, "already": True}
        proposal = Proposal()  # membership changes are Raft entries: same callback, same wait
        method(address, callback=proposal.callback)
        try:
            await proposal.result(RAFT_CALL_TIMEOUT_S)
        except ProposalError as e:
            raise AdminError(f"membership change of group {group} failed ({e})") from None
        return {"ok": True}

    async def _op_transfer_leader(self, r: dict[str, Any]) -> dict[str, Any]:
        group = int(r["group"])
        local = self._local(group)
        # Without "to", pysyncobj picks the most caught-up connected member.
        address = self._replicas.raft_address(int(r["to"]), group) if "to" in r else None

        proposal = Proposal()
        # transferLeadership reads Raft internals: it must run on the driver thread.
        future = self._replicas.on_driver(
            lambda: local.raft.transferLeadership(address, callback=proposal.callback)
        )

        # An exception there would otherwise leave us waiting for a callback that never comes.
        def failed(f: concurrent.futures.Future[Any]) -> None:
            if f.exception() is not None:
                proposal.callback(None, FAIL_REASON.REQUEST_DENIED)

        future.add_done_callback(failed)
        try:
            await proposal.result(RAFT_CALL_TIMEOUT_S)
        except ProposalError as e:
            raise AdminError(f"leadership transfer of group {group} refused ({e})") from None
        return {"ok": True}


async def _committed(local: Any, group: int) -> None:
    """Once a no-op of this leader's term has committed (``LocalGroup.read_barrier``)."""
    try:
        await local.read_barrier(RAFT_CALL_TIMEOUT_S)
    except ProposalError as e:
        raise AdminError(f"group {group}: no committed membership to read ({e})") from None


def _node_id(r: dict[str, Any]) -> int:
    """The request's ``node_id``; ValueError (a refusal) when it is not an integer."""
    node_id = r.get("node_id")
    if not isinstance(node_id, int) or isinstance(node_id, bool):
        raise ValueError(f"node_id must be an integer, got {type(node_id).__name__}")
    return node_id


def _zone(r: dict[str, Any]) -> str:
    """The request's ``zone``: "" when it has none (a node of an older revision)."""
    zone = r.get("zone", "")
    if not isinstance(zone, str):
        raise ValueError(f"a zone is a string, got {type(zone).__name__}")
    return zone


async def _addresses(host: str) -> list[IPAddress]:
    """The IP addresses of a host: itself if it is one, else what the resolver says (none
    when it cannot be resolved)."""
    ip = parse_ip(host)
    if ip is not None:
        return [ip]
    try:
        infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_STREAM)
    except OSError:
        return []
    found = [parse_ip(str(info[4][0])) for info in infos]
    return [a for a in found if a is not None]
