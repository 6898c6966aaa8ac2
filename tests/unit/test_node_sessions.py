"""The multi-device policy (pure ``evictions``) and the session registry."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from node.sessions import DeviceLimits, Eviction, SessionRegistry, evictions
from proto.wkproto import DeviceFlag, DeviceLevel, ReasonCode

APP, WEB, PC = DeviceFlag.APP, DeviceFlag.WEB, DeviceFlag.PC
SLAVE, MASTER = DeviceLevel.SLAVE, DeviceLevel.MASTER

_conn_ids = itertools.count(1)
_clock = itertools.count(1)


@dataclass(eq=False)
class FakeSession:
    uid: str
    device_flag: int
    device_id: str
    device_level: int = SLAVE
    conn_id: int = field(default_factory=lambda: next(_conn_ids))
    connected_at: float = field(default_factory=lambda: float(next(_clock)))
    pushed: list[Any] = field(default_factory=list)
    kicked: list[tuple[ReasonCode, str]] = field(default_factory=list)
    closed: int = 0

    def push(self, msg: Any) -> None:
        self.pushed.append(msg)

    def kick(self, reason_code: ReasonCode, reason: str) -> None:
        self.kicked.append((reason_code, reason))

    def close(self) -> None:
        self.closed += 1


def S(uid: str = "u1", flag: int = APP, dev: str = "d1", level: int = SLAVE) -> FakeSession:
    return FakeSession(uid=uid, device_flag=flag, device_id=dev, device_level=level)


def as_pairs(out: list[Eviction]) -> list[tuple[int, bool]]:
    return [(e.session.conn_id, e.kick) for e in out]


LIMITS = DeviceLimits()

# --- DeviceLimits ---------------------------------------------------------------------------


def test_device_limits_defaults_and_for_flag() -> None:
    limits = DeviceLimits()
    assert (limits.app, limits.web, limits.pc) == (1, 10, 1)
    custom = DeviceLimits(app=2, web=3, pc=4)
    assert custom.for_flag(APP) == 2
    assert custom.for_flag(WEB) == 3
    assert custom.for_flag(PC) == 4
    # any other platform (e.g. the system device) falls under the APP limit
    assert custom.for_flag(DeviceFlag.SYSTEM) == 2
    assert custom.for_flag(42) == 2


# --- evictions (pure policy) ----------------------------------------------------------------


def test_first_session_evicts_nothing() -> None:
    assert evictions([], S(), LIMITS) == []


def test_same_device_id_is_replaced_quietly() -> None:
    old = S(flag=WEB, dev="browser-1")
    new = S(flag=WEB, dev="browser-1")
    assert as_pairs(evictions([old], new, LIMITS)) == [(old.conn_id, False)]


def test_same_device_id_of_a_master_is_replaced_quietly_too() -> None:
    old = S(dev="phone", level=MASTER)
    new = S(dev="phone", level=MASTER)
    assert as_pairs(evictions([old], new, LIMITS)) == [(old.conn_id, False)]


def test_new_session_itself_is_never_evicted() -> None:
    new = S()
    assert evictions([new], new, LIMITS) == []


def test_slave_app_limit_one_kicks_the_older() -> None:
    old = S(flag=APP, dev="phone-a")
    new = S(flag=APP, dev="phone-b")
    assert as_pairs(evictions([old], new, LIMITS)) == [(old.conn_id, True)]


def test_pc_limit_one_kicks_the_older() -> None:
    old = S(flag=PC, dev="pc-a")
    new = S(flag=PC, dev="pc-b")
    assert as_pairs(evictions([old], new, LIMITS)) == [(old.conn_id, True)]


def test_other_platforms_are_not_touched() -> None:
    web = S(flag=WEB, dev="w")
    pc = S(flag=PC, dev="p")
    new = S(flag=APP, dev="phone")
    assert evictions([web, pc], new, LIMITS) == []


def test_web_limit_ten_lets_ten_coexist_and_the_eleventh_kicks_the_oldest() -> None:
    webs = [S(flag=WEB, dev=f"tab{i}") for i in range(9)]
    tenth = S(flag=WEB, dev="tab9")
    assert evictions(webs, tenth, LIMITS) == []
    webs.append(tenth)
    eleventh = S(flag=WEB, dev="tab10")
    # pass them in a scrambled order: "oldest" is by connected_at, not by position
    scrambled = webs[5:] + webs[:5]
    assert as_pairs(evictions(scrambled, eleventh, LIMITS)) == [(webs[0].conn_id, True)]


def test_over_the_limit_kicks_the_oldest_ones_until_it_fits() -> None:
    """After a limit is lowered (config change) the surplus goes, oldest first."""
    webs = [S(flag=WEB, dev=f"tab{i}") for i in range(5)]
    new = S(flag=WEB, dev="new")
    out = evictions(webs, new, DeviceLimits(web=2))
    assert as_pairs(out) == [(s.conn_id, True) for s in webs[:4]]


def test_oldest_is_decided_by_connected_at_then_conn_id() -> None:
    a = FakeSession("u1", WEB, "a", conn_id=20, connected_at=5.0)
    b = FakeSession("u1", WEB, "b", conn_id=10, connected_at=5.0)
    c = FakeSession("u1", WEB, "c", conn_id=5, connected_at=6.0)
    new = FakeSession("u1", WEB, "n", conn_id=30, connected_at=7.0)
    assert as_pairs(evictions([a, b, c], new, DeviceLimits(web=2))) == [(10, True), (20, True)]


def test_master_kicks_every_other_session_of_its_platform_only() -> None:
    apps = [S(flag=APP, dev=f"a{i}") for i in range(3)]
    web = S(flag=WEB, dev="w")
    pc = S(flag=PC, dev="p")
    new = S(flag=APP, dev="master-phone", level=MASTER)
    out = evictions([*apps, web, pc], new, DeviceLimits(app=5))
    assert as_pairs(out) == [(s.conn_id, True) for s in apps]


def test_master_replaces_its_own_device_quietly_and_kicks_the_rest() -> None:
    same = S(flag=APP, dev="phone")
    other = S(flag=APP, dev="tablet")
    new = S(flag=APP, dev="phone", level=MASTER)
    out = evictions([same, other], new, DeviceLimits(app=5))
    assert sorted(as_pairs(out)) == sorted([(same.conn_id, False), (other.conn_id, True)])


def test_same_device_replacement_does_not_count_against_the_limit() -> None:
    """Reconnecting phone: the dead socket goes quietly, nobody is kicked."""
    old = S(flag=APP, dev="phone")
    new = S(flag=APP, dev="phone")
    out = evictions([old], new, DeviceLimits(app=1))
    assert [e.kick for e in out] == [False]


def test_replacement_and_limit_together() -> None:
    same = S(flag=APP, dev="phone")
    other = S(flag=APP, dev="tablet")
    new = S(flag=APP, dev="phone")
    out = evictions([same, other], new, DeviceLimits(app=1))
    assert sorted(as_pairs(out)) == sorted([(same.conn_id, False), (other.conn_id, True)])


def test_evictions_does_not_call_the_sessions() -> None:
    old = S(flag=APP, dev="a")
    evictions([old], S(flag=APP, dev="b"), LIMITS)
    assert old.kicked == [] and old.closed == 0 and old.pushed == []


# --- SessionRegistry ------------------------------------------------------------------------


def test_registry_add_of_len_remove() -> None:
    reg = SessionRegistry(DeviceLimits())
    a = S(uid="u1", flag=APP, dev="phone")
    w = S(uid="u1", flag=WEB, dev="tab")
    b = S(uid="u2", flag=APP, dev="phone")
    assert reg.add(a) == []
    assert reg.add(w) == []
    assert reg.add(b) == []
    assert len(reg) == 3
    assert set(map(id, reg.of("u1"))) == {id(a), id(w)}
    assert reg.of("u2") == [b]
    assert reg.of("nobody") == []
    assert reg.of_flag("u1", WEB) == [w]
    assert reg.of_flag("u1", APP) == [a]
    assert reg.of_flag("u1", PC) == []
    assert len(reg.of_flag("u1", None)) == 2
    reg.remove(w)
    assert reg.of("u1") == [a]
    assert len(reg) == 2
    reg.remove(a)
    reg.remove(b)
    assert len(reg) == 0
    assert reg.of("u1") == []


def test_registry_add_drops_the_evicted_and_returns_them() -> None:
    reg = SessionRegistry(DeviceLimits())
    old = S(flag=APP, dev="a")
    reg.add(old)
    new = S(flag=APP, dev="b")
    out = reg.add(new)
    assert as_pairs(out) == [(old.conn_id, True)]
    assert reg.of("u1") == [new]
    assert len(reg) == 1
    # the registry leaves closing to the caller
    assert old.kicked == [] and old.closed == 0


def test_removing_a_replaced_session_keeps_the_new_one() -> None:
    reg = SessionRegistry(DeviceLimits())
    old = S(flag=APP, dev="phone")
    new = S(flag=APP, dev="phone")
    reg.add(old)
    assert as_pairs(reg.add(new)) == [(old.conn_id, False)]
    reg.remove(old)  # the old connection's cleanup runs after the new one registered
    assert reg.of("u1") == [new]
    assert len(reg) == 1


def test_remove_checks_identity_not_just_conn_id() -> None:
    reg = SessionRegistry(DeviceLimits())
    registered = S()
    reg.add(registered)
    impostor = FakeSession("u1", APP, "d1", conn_id=registered.conn_id)
    reg.remove(impostor)
    assert reg.of("u1") == [registered]


def test_remove_unknown_is_a_no_op() -> None:
    reg = SessionRegistry(DeviceLimits())
    reg.remove(S(uid="ghost"))
    assert len(reg) == 0


def test_registry_eleven_web_tabs() -> None:
    reg = SessionRegistry(DeviceLimits())
    tabs = [S(flag=WEB, dev=f"tab{i}") for i in range(11)]
    for tab in tabs[:10]:
        assert reg.add(tab) == []
    out = reg.add(tabs[10])
    assert as_pairs(out) == [(tabs[0].conn_id, True)]
    assert {s.conn_id for s in reg.of_flag("u1", WEB)} == {t.conn_id for t in tabs[1:]}
    assert len(reg) == 10


def test_registry_master_login_kicks_same_platform_of_same_uid_only() -> None:
    reg = SessionRegistry(DeviceLimits(app=3))
    apps = [S(flag=APP, dev=f"a{i}") for i in range(3)]
    web = S(flag=WEB, dev="w")
    someone_else = S(uid="u2", flag=APP, dev="a0")
    for s in [*apps, web, someone_else]:
        assert reg.add(s) == []
    master = S(flag=APP, dev="m", level=MASTER)
    out = reg.add(master)
    assert {e.session.conn_id for e in out} == {s.conn_id for s in apps}
    assert all(e.kick for e in out)
    assert {s.conn_id for s in reg.of("u1")} == {master.conn_id, web.conn_id}
    assert reg.of("u2") == [someone_else]
