"""What every generator knows about the cluster under test: addresses, ports, the fuzzer's own
users and channels, and the ids it must leave alone. Plain data, passed to the worker process
as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from launcher.devcluster import (
    CONSOLE_PORT,
    GRPC_PORT,
    HTTP_PORT,
    PUBLIC_GRPC_PORT,
    RAFT_PORT,
    SLOT_GROUPS,
    TCP_PORT,
    WS_PORT,
)

from .safety import Protected

FUZZ_PREFIX = "fz"
"""Every id the fuzzer creates starts with this, so a node log line is easy to attribute."""


@dataclass(frozen=True, slots=True)
class FuzzUser:
    uid: str
    token: str
    device_flag: int


@dataclass(frozen=True, slots=True)
class FuzzContext:
    hosts: dict[int, str]
    users: tuple[FuzzUser, ...]
    groups: tuple[str, ...]
    """Group channels the fuzz users are subscribed to (valid sends go there)."""
    protected_ids: tuple[str, ...] = ()
    raft_groups: int = SLOT_GROUPS
    """Slot groups per cluster; node n listens for Raft on ``raft_port + g``, g in 0..groups."""
    auth_timeout_s: float = 4.0
    tcp_port: int = TCP_PORT
    ws_port: int = WS_PORT
    http_port: int = HTTP_PORT
    console_port: int = CONSOLE_PORT
    """The web console: the same HTTP server with its own routes (log-in, ``/api/...``); a
    share of the ``http`` target's connections go there."""
    grpc_port: int = PUBLIC_GRPC_PORT
    """The public gRPC API; ``peer_port`` the peer services (both get every method: each
    refuses the other's)."""
    peer_port: int = GRPC_PORT
    raft_port: int = RAFT_PORT
    api_token: str = ""
    admin_token: str = ""
    """The cluster's ``auth.api_token`` and ``auth.admin_token``: most fuzzed requests carry
    the right one (so that they reach the handlers), some a wrong, damaged or no token."""
    protected: Protected = field(init=False, compare=False, repr=False)
    """The workload's ids: nothing the fuzzer sends may name them."""
    api_protected: Protected = field(init=False, compare=False, repr=False)
    """Also the fuzz users' uids, for the HTTP and gRPC generators: they hold the API token,
    and a fuzzed token change, ban or kick of a fuzz user would end the logins the WKProto
    targets depend on."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "protected", Protected(self.protected_ids))
        logins = [u.uid for u in self.users]
        object.__setattr__(self, "api_protected", Protected([*self.protected_ids, *logins]))

    @property
    def nodes(self) -> list[int]:
        return sorted(self.hosts)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("protected", None)
        d.pop("api_protected", None)
        d["hosts"] = {str(k): v for k, v in self.hosts.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FuzzContext:
        d = dict(d)
        d["hosts"] = {int(k): v for k, v in d["hosts"].items()}
        d["users"] = tuple(FuzzUser(**u) for u in d["users"])
        d["groups"] = tuple(d["groups"])
        d["protected_ids"] = tuple(d.get("protected_ids", ()))
        return cls(**d)
