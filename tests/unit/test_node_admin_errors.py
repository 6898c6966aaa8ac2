"""Admin errors carry a code between nodes, and callers decide on the code, not the text."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from node.admin import (
    FAILED,
    NOT_CONTROLLER_LEADER,
    REFUSED,
    UNREACHABLE,
    Admin,
    AdminError,
    AdminRefused,
    error_of,
)
from proto.raftchat.peer.v1 import peer_pb2 as pb


def answer(error: Exception) -> dict[str, Any]:
    async def fail() -> dict[str, Any]:
        raise error

    return trio.run(Admin._answer, fail())


def test_an_answer_carries_the_code_and_the_caller_gets_it_back() -> None:
    for error, code in [
        (AdminError("not the controller leader", NOT_CONTROLLER_LEADER), NOT_CONTROLLER_LEADER),
        (AdminRefused("node 9 is not a member"), REFUSED),
        (ValueError("below cluster.replicas"), REFUSED),
        (AdminError("no replica of group 3 here"), FAILED),
        (KeyError("group"), FAILED),
    ]:
        reply = answer(error)
        assert reply["code"] == code, error
        again = error_of(2, reply)
        assert again.code == code and isinstance(again, AdminRefused) == (code == REFUSED)
        assert str(again).startswith("node 2: ")


def test_an_answer_of_an_older_node_without_a_code() -> None:
    assert isinstance(error_of(1, {"error": "no", "refused": True}), AdminRefused)
    assert error_of(1, {"error": "busy"}).code == FAILED


def make_admin(
    node_id: int = 1,
    cluster: Any = None,
    clients: Any = None,
    replicas: Any = None,
    controller: Any = None,
) -> Admin:
    """An Admin with only the parts a test gives it."""
    return Admin(
        node_id,
        cluster,
        clients,
        replicas,
        lambda: controller,
        cluster_id=lambda: "c1",
        peer_draining=lambda _node_id: None,
        start_drain=lambda: None,
    )


def admin_with(calls: list[int], first: AdminError) -> Admin:
    admin = make_admin(cluster=SimpleNamespace(leader_of=lambda _group: 2))

    async def call(node_id: int, _request: dict[str, Any]) -> dict[str, Any]:
        calls.append(node_id)
        if len(calls) == 1:
            raise first
        return {"ok": True}

    admin.call = call  # type: ignore[method-assign]
    return admin


@pytest.mark.parametrize("code", [NOT_CONTROLLER_LEADER, UNREACHABLE])
def test_a_stale_controller_view_is_asked_again(code: str) -> None:
    calls: list[int] = []
    admin = admin_with(calls, AdminError("node 2: moved on", code))
    assert trio.run(admin.on_controller_leader, {"op": "leave"}) == {"ok": True}
    assert calls == [2, 2]


def test_the_text_alone_does_not_make_an_error_retryable() -> None:
    calls: list[int] = []
    admin = admin_with(calls, AdminError("node 2: not the controller leader, unreachable"))
    with pytest.raises(AdminError):
        trio.run(admin.on_controller_leader, {"op": "leave"})
    assert calls == [2]


class _Leader:
    """A group's leader whose member list already lacks node 3: a removal appended, which a
    no-op of this leader's term commits (``barrier`` None) or cannot (it was deposed)."""

    group_id = 1

    def __init__(self, barrier: Exception | None) -> None:
        self.view = SimpleNamespace(members=["127.0.0.12:12001"], commit_index=9, applied_index=9)
        self.barrier = barrier
        self.barriers = 0
        self.raft = SimpleNamespace(removeNodeFromCluster=self._no_change)

    def _no_change(self, *_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the removal is done: nothing to propose")

    def is_leader(self) -> bool:
        return True

    def leader_id(self) -> int:
        return 1

    async def read_barrier(self, _timeout_s: float) -> None:
        self.barriers += 1
        if self.barrier is not None:
            raise self.barrier


def admin_of(local: _Leader) -> Admin:
    hosts = {1: "127.0.0.11", 2: "127.0.0.12", 3: "127.0.0.13"}
    replicas = SimpleNamespace(
        raft_address=lambda n, g: f"{hosts[n]}:{12000 + g}",
        node_of_address=lambda a: {f"{h}:12001": n for n, h in hosts.items()}.get(a),
    )
    return make_admin(cluster=SimpleNamespace(local={1: local}), replicas=replicas)


def test_a_removal_is_done_only_once_committed() -> None:
    """pysyncobj drops a member from its list when the removal is appended: a removal that a
    deposed leader appended and never committed looked done, the controller recorded it and
    deleted the replica's data while the node was still a voter elsewhere."""
    from node.groups.local import ProposalError

    removal = {"group": 1, "remove": 3}
    committed = _Leader(None)
    assert trio.run(admin_of(committed)._op_change_members, removal) == {
        "ok": True,
        "already": True,
    }
    assert committed.barriers == 1
    deposed = _Leader(ProposalError("not_leader"))
    with pytest.raises(AdminError, match="no committed membership"):
        trio.run(admin_of(deposed)._op_change_members, removal)
    with pytest.raises(AdminError, match="no committed membership"):
        trio.run(admin_of(deposed)._op_group_status, {"group": 1, "committed": True})
    status = trio.run(admin_of(committed)._op_group_status, {"group": 1})
    assert status["members"] == [1, 2] and committed.barriers == 1  # a plain status: no no-op


class _PeerAdmins:
    """``GrpcClients`` whose ``Admin`` calls reach other Admins' ``rpc`` (the peer RPC's
    handler): requests and answers cross as the serialized bytes the wire carries."""

    def __init__(self, admins: dict[str, Admin]) -> None:
        self.admins = admins
        self.calls: list[str] = []

    def get(self, target: str) -> Any:
        async def call(method: str, request: Any, timeout_s: float) -> Any:
            assert method == "Admin"
            self.calls.append(target)
            on_wire = pb.AdminRequest.FromString(request.SerializeToString())
            reply = await self.admins[target].rpc(on_wire)
            return pb.AdminReply.FromString(reply.SerializeToString())

        return SimpleNamespace(call=call)


class _Controller:
    def __init__(self) -> None:
        self.group = SimpleNamespace(is_leader=lambda: True)
        self.left: list[int] = []

    async def leave(self, node_id: int, *, force: bool) -> None:
        if node_id == 9:
            raise ValueError("node 9 is not a member")  # the controller's refusals
        self.left.append(node_id)


def two_nodes(leaders: list[int], second: _Controller | None = None) -> tuple[Admin, _PeerAdmins]:
    """Node 1 leads the controller; node 2 does if it is given ``second``. Node 1's view of
    the controller's leader is ``leaders``, one a look (the last one from then on)."""
    views = iter(leaders)

    def leader_of(_group: int) -> int:
        return next(views, leaders[-1])

    wire = _PeerAdmins({})
    one = make_admin(
        1,
        SimpleNamespace(leader_of=leader_of, peer_target=lambda n: f"node{n}"),
        wire,
        controller=_Controller(),
    )
    wire.admins["node2"] = make_admin(2, controller=second)
    return one, wire


LEAVE = {"op": "leave", "node_id": 3, "forwarded": True}


def test_the_code_survives_the_peer_rpc_and_decides_the_retry() -> None:
    """A forwarded leave reaching a node that does not lead the controller comes back from
    the peer ``Admin`` RPC with its code; the caller asks the controller's leader again."""
    one, wire = two_nodes([2, 1])
    with pytest.raises(AdminError) as caught:
        trio.run(one.call, 2, LEAVE)
    assert caught.value.code == NOT_CONTROLLER_LEADER
    assert str(caught.value) == "node 2: not the controller leader"  # the text travels too

    one, wire = two_nodes([2, 1])
    reply = trio.run(
        one.on_controller_leader, LEAVE, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    assert reply == {"ok": True}
    assert wire.calls == ["node2"]  # then node 1 itself, without the wire


def test_a_refusal_over_the_peer_rpc_is_not_asked_again() -> None:
    one, wire = two_nodes([2], second=_Controller())
    with pytest.raises(AdminRefused) as caught:
        trio.run(one.on_controller_leader, {**LEAVE, "node_id": 9})
    assert caught.value.code == REFUSED
    assert str(caught.value) == "node 2: node 9 is not a member"
    assert wire.calls == ["node2"]
