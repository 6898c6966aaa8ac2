"""The node's table of live client sessions, and the multi-device policy.

Policy, applied when a session authenticates (see ``docs/protocol.md``):

1. An older session of the same uid, platform (device flag) and device id is replaced: it is
   closed without a kick, because it is almost always a dead socket of a client that reconnected.
2. A master-level device (``device_level`` 1 in ``/user/token``) owns its platform: every other
   session of that uid and platform is kicked, as WuKongIM does ("login in other device").
3. Otherwise the platform's instance limit applies (default one APP, one PC, ten WEB): while the
   uid holds that many sessions on the platform, the oldest is kicked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from proto.wkproto import DeviceFlag, DeviceLevel, ReasonCode


class ConnectedDevice(Protocol):
    """A logged-in client connection, as the registry and monitoring both name it."""

    @property
    def conn_id(self) -> int: ...
    @property
    def uid(self) -> str: ...
    @property
    def device_flag(self) -> int: ...
    @property
    def device_id(self) -> str: ...
    @property
    def device_level(self) -> int: ...
    @property
    def connected_at(self) -> float: ...


class SessionLike(ConnectedDevice, Protocol):
    """What the registry needs of a session (the gateway's ``Session`` satisfies it)."""

    def push(self, msg: Any) -> None:
        """Queue a RECV of a committed message."""

    def kick(self, reason_code: ReasonCode, reason: str) -> None:
        """DISCONNECT with a reason, then close."""

    def close(self) -> None:
        """Close without a word."""


@dataclass(frozen=True, slots=True)
class DeviceLimits:
    app: int = 1
    web: int = 10
    pc: int = 1

    def for_flag(self, device_flag: int) -> int:
        if device_flag == DeviceFlag.WEB:
            return self.web
        if device_flag == DeviceFlag.PC:
            return self.pc
        return self.app


@dataclass(frozen=True, slots=True)
class Eviction:
    session: SessionLike
    kick: bool
    """True: DISCONNECT with ConnectKick first. False: close quietly (same device reconnected)."""


def evictions(
    existing: Iterable[SessionLike], new: SessionLike, limits: DeviceLimits
) -> list[Eviction]:
    """Which of a uid's live sessions must go when ``new`` joins them (pure; unit-tested)."""
    same_flag = sorted(
        (s for s in existing if s.device_flag == new.device_flag and s.conn_id != new.conn_id),
        key=lambda s: (s.connected_at, s.conn_id),
    )
    out = [Eviction(s, kick=False) for s in same_flag if s.device_id == new.device_id]
    others = [s for s in same_flag if s.device_id != new.device_id]
    if new.device_level == DeviceLevel.MASTER:
        out.extend(Eviction(s, kick=True) for s in others)
        return out
    limit = limits.for_flag(new.device_flag)
    overflow = len(others) + 1 - limit
    out.extend(Eviction(s, kick=True) for s in others[: max(overflow, 0)])
    return out


SessionListener = Callable[[SessionLike, bool], None]
"""(session, True when it joined / False when it left the registry); runs after the change."""


class SessionRegistry:
    """Sessions of this node by uid. Only the trio thread touches it."""

    def __init__(self, limits: DeviceLimits) -> None:
        self.limits = limits
        self._by_uid: dict[str, dict[int, SessionLike]] = {}
        self.listeners: list[SessionListener] = []

    def add(self, session: SessionLike) -> list[Eviction]:
        """Register ``session`` and return the sessions the policy evicts (caller closes them)."""
        current = self._by_uid.setdefault(session.uid, {})
        out = evictions(current.values(), session, self.limits)
        for ev in out:
            current.pop(ev.session.conn_id, None)
        current[session.conn_id] = session
        for listener in self.listeners:
            for ev in out:
                listener(ev.session, False)
            listener(session, True)
        return out

    def remove(self, session: SessionLike) -> None:
        current = self._by_uid.get(session.uid)
        if current is not None and current.get(session.conn_id) is session:
            del current[session.conn_id]
            if not current:
                del self._by_uid[session.uid]
            for listener in self.listeners:
                listener(session, False)

    def of(self, uid: str) -> list[SessionLike]:
        return list(self._by_uid.get(uid, {}).values())

    def all(self) -> list[SessionLike]:
        return [s for by_conn in self._by_uid.values() for s in by_conn.values()]

    def of_flag(self, uid: str, device_flag: int | None) -> list[SessionLike]:
        return [s for s in self.of(uid) if device_flag is None or s.device_flag == device_flag]

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_uid.values())
