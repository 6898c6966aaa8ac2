"""Admin errors carry a code between nodes, and callers decide on the code, not the text."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio

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


def admin_with(calls: list[int], first: AdminError) -> Admin:
    node = SimpleNamespace(router=SimpleNamespace(leader_of=lambda _group: 2))
    admin = Admin(node)  # type: ignore[arg-type]

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
    node = SimpleNamespace(
        router=SimpleNamespace(local={1: local}),
        config=SimpleNamespace(node=SimpleNamespace(id=1)),
        raft_address=lambda n, g: f"{hosts[n]}:{12000 + g}",
        node_of_address=lambda a: {f"{h}:12001": n for n, h in hosts.items()}.get(a),
    )
    return Admin(node)  # type: ignore[arg-type]


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
