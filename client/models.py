"""Typed results of the HTTP API (and the messages a session delivers), parsed from the JSON
the server answers. Parsers are lenient about members they do not need (a newer server may add
some) and strict about the ones they do (a missing ``message_id`` is a ``KeyError``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proto.wkproto import HeaderFlag

if TYPE_CHECKING:
    from .wkproto import ReceivedMessage

_HEADER_FLAGS = {
    "no_persist": HeaderFlag.NO_PERSIST,
    "red_dot": HeaderFlag.RED_DOT,
    "sync_once": HeaderFlag.SYNC_ONCE,
}


def header_to_flags(header: dict[str, Any] | None) -> int:
    """``{"no_persist": 0, "red_dot": 1, "sync_once": 0}`` as WKProto header flag bits."""
    flags = 0
    for name, bit in _HEADER_FLAGS.items():
        if header and header.get(name):
            flags |= int(bit)
    return flags


def flags_to_header(flags: int) -> dict[str, int]:
    """The HTTP ``header`` object for WKProto header flag bits."""
    return {name: 1 if flags & bit else 0 for name, bit in _HEADER_FLAGS.items()}


@dataclass(frozen=True, slots=True)
class Message:
    """A stored or pushed message. ``channel_id`` is in the reader's view: a person channel
    appears under the peer's uid. ``from_uid`` is "" for the system."""

    message_id: int
    message_seq: int
    """0 for messages that are not stored (``no_persist``, live channels)."""
    client_msg_no: str
    from_uid: str
    channel_id: str
    channel_type: int
    timestamp: int
    """Seconds since the epoch (the server's clock at commit)."""
    payload: bytes
    flags: int = 0
    """WKProto header flags (``HeaderFlag``): NO_PERSIST, RED_DOT, SYNC_ONCE."""
    setting: int = 0
    topic: str = ""
    expire: int = 0
    revoked: bool = False
    revoker: str = ""
    edited: int = 0
    """The edit version (0: never edited); ``payload`` is then the latest one."""
    edited_at: int = 0
    channel_message_seq: int = 0
    """Only for ``/message/sync`` (command messages), where ``message_seq`` is the sync
    position: the message's seq in its command channel."""

    @property
    def text(self) -> str:
        """The payload as text (invalid UTF-8 replaced), for display."""
        return self.payload.decode("utf-8", errors="replace")

    @property
    def no_persist(self) -> bool:
        return bool(self.flags & HeaderFlag.NO_PERSIST)

    @property
    def red_dot(self) -> bool:
        return bool(self.flags & HeaderFlag.RED_DOT)

    @property
    def sync_once(self) -> bool:
        return bool(self.flags & HeaderFlag.SYNC_ONCE)

    @property
    def channel(self) -> tuple[str, int]:
        return self.channel_id, self.channel_type

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Message:
        """A ``MessageResp`` (``/channel/messagesync``, ``/messages``, webhooks...)."""
        return cls(
            message_id=int(d["message_id"]),
            message_seq=int(d["message_seq"]),
            client_msg_no=str(d.get("client_msg_no", "")),
            from_uid=str(d.get("from_uid", "")),
            channel_id=str(d["channel_id"]),
            channel_type=int(d["channel_type"]),
            timestamp=int(d.get("timestamp", 0)),
            payload=base64.b64decode(d.get("payload") or ""),
            flags=header_to_flags(d.get("header")),
            setting=int(d.get("setting", 0)),
            topic=str(d.get("topic", "")),
            expire=int(d.get("expire", 0)),
            revoked=bool(d.get("revoke", 0)),
            revoker=str(d.get("revoker", "")),
            edited=int(d.get("edited", 0)),
            edited_at=int(d.get("edited_at", 0)),
            channel_message_seq=int(d.get("channel_message_seq", 0)),
        )

    @classmethod
    def from_recv(cls, m: ReceivedMessage) -> Message:
        """A message pushed over WKProto (payload already decrypted)."""
        return cls(
            message_id=m.message_id,
            message_seq=m.message_seq,
            client_msg_no=m.client_msg_no,
            from_uid=m.from_uid,
            channel_id=m.channel_id,
            channel_type=m.channel_type,
            timestamp=m.timestamp,
            payload=m.payload,
            flags=int(m.flags & ~HeaderFlag.DUP),
            setting=m.setting,
            topic=m.topic,
            expire=m.expire,
        )


@dataclass(frozen=True, slots=True)
class SendResult:
    """The answer to ``/message/send``: the message is durable when this is returned."""

    message_id: int
    message_seq: int
    client_msg_no: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SendResult:
        return cls(
            message_id=int(d["message_id"]),
            message_seq=int(d["message_seq"]),
            client_msg_no=str(d.get("client_msg_no", "")),
        )


@dataclass(frozen=True, slots=True)
class BatchSendResult:
    """``/message/sendbatch``: the recipients whose send failed, each with its reason code."""

    failed: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.failed

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BatchSendResult:
        uids = d.get("fail_uids") or []
        reasons = d.get("reason") or []
        return cls(failed={str(u): int(r) for u, r in zip(uids, reasons, strict=True)})


@dataclass(frozen=True, slots=True)
class MessagePage:
    """One page of ``/channel/messagesync``, messages in ascending seq."""

    messages: list[Message]
    more: bool
    """Older (pull down) or newer (pull up) messages remain past this page."""
    start_message_seq: int = 0
    end_message_seq: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MessagePage:
        return cls(
            messages=[Message.from_json(m) for m in d.get("messages") or []],
            more=bool(d.get("more", 0)),
            start_message_seq=int(d.get("start_message_seq", 0)),
            end_message_seq=int(d.get("end_message_seq", 0)),
        )


@dataclass(frozen=True, slots=True)
class Conversation:
    """One row of ``/conversation/sync``; ``channel_id`` of a person chat is the peer's uid."""

    channel_id: str
    channel_type: int
    unread: int
    timestamp: int
    last_msg_seq: int
    last_client_msg_no: str
    readed_to_msg_seq: int
    version: int
    mention: bool = False
    recents: list[Message] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Conversation:
        return cls(
            channel_id=str(d["channel_id"]),
            channel_type=int(d["channel_type"]),
            unread=int(d.get("unread", 0)),
            timestamp=int(d.get("timestamp", 0)),
            last_msg_seq=int(d.get("last_msg_seq", 0)),
            last_client_msg_no=str(d.get("last_client_msg_no", "")),
            readed_to_msg_seq=int(d.get("readed_to_msg_seq", 0)),
            version=int(d.get("version", 0)),
            mention=bool(d.get("mention", 0)),
            recents=[Message.from_json(m) for m in d.get("recents") or []],
        )


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """A channel's stored flags (``GET /channel/info``)."""

    channel_id: str
    channel_type: int
    ban: bool = False
    disband: bool = False
    send_ban: bool = False
    allow_stranger: bool = False
    large: bool = False

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChannelInfo:
        return cls(
            channel_id=str(d["channel_id"]),
            channel_type=int(d["channel_type"]),
            ban=bool(d.get("ban", 0)),
            disband=bool(d.get("disband", 0)),
            send_ban=bool(d.get("send_ban", 0)),
            allow_stranger=bool(d.get("allow_stranger", 0)),
            large=bool(d.get("large", 0)),
        )


@dataclass(frozen=True, slots=True)
class OnlineStatus:
    uid: str
    device_flag: int
    online: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OnlineStatus:
        return cls(uid=str(d["uid"]), device_flag=int(d["device_flag"]), online=bool(d["online"]))


@dataclass(frozen=True, slots=True)
class RevokeResult:
    message_id: int
    message_seq: int
    revoker: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RevokeResult:
        return cls(
            message_id=int(d["message_id"]),
            message_seq=int(d["message_seq"]),
            revoker=str(d.get("revoker", "")),
        )


@dataclass(frozen=True, slots=True)
class EditResult:
    message_id: int
    message_seq: int
    version: int
    edited_at: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EditResult:
        return cls(
            message_id=int(d["message_id"]),
            message_seq=int(d["message_seq"]),
            version=int(d["version"]),
            edited_at=int(d.get("edited_at", 0)),
        )


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """One Raft group in ``/cluster/status`` (group 0 is the controller). The fields after
    ``leader`` are only there for groups with a replica on the answering node."""

    group: int
    replicas: list[int]
    leader: int | None
    is_leader: bool = False
    commit_index: int = 0
    applied_index: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GroupStatus:
        leader = d.get("leader")
        return cls(
            group=int(d["group"]),
            replicas=[int(r) for r in d.get("replicas") or []],
            leader=None if leader is None else int(leader),
            is_leader=bool(d.get("is_leader", False)),
            commit_index=int(d.get("commit_index", 0)),
            applied_index=int(d.get("applied_index", 0)),
        )


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The answering node's view of the cluster; ``raw`` keeps the whole JSON answer."""

    node_id: int
    placement_version: int
    nodes: dict[int, str]
    slot_table: list[int]
    groups: list[GroupStatus]
    raw: dict[str, Any] = field(repr=False, compare=False)

    def group(self, group: int) -> GroupStatus:
        return next(g for g in self.groups if g.group == group)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClusterStatus:
        return cls(
            node_id=int(d["node_id"]),
            placement_version=int(d["placement_version"]),
            nodes={int(k): str(v) for k, v in (d.get("nodes") or {}).items()},
            slot_table=[int(g) for g in d.get("slot_table") or []],
            groups=[GroupStatus.from_json(g) for g in d.get("groups") or []],
            raw=d,
        )


@dataclass(frozen=True, slots=True)
class Route:
    """``GET /route``: where WKProto clients connect."""

    tcp_addr: str
    ws_addr: str
    wss_addr: str = ""
    uids: tuple[str, ...] = ()
    """``/route/batch``: the uids that connect here."""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Route:
        return cls(
            tcp_addr=str(d.get("tcp_addr", "")),
            ws_addr=str(d.get("ws_addr", "")),
            wss_addr=str(d.get("wss_addr", "")),
            uids=tuple(str(u) for u in d.get("uids", ())),
        )
