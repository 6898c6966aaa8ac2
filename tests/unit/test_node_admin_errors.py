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
