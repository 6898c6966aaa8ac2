"""What the store keeps, and its byte encodings.

Messages use a compact binary layout (they dominate the disk); metadata uses JSON, which is small
and easy to inspect with ``ldb``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field

_MSG_HEAD = struct.Struct(">qQqBBBI")
_U16 = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class MessageRecord:
    message_id: int
    message_seq: int
    timestamp_ms: int
    channel_id: str
    """Canonical id (``a@b`` for person channels)."""
    channel_type: int
    from_uid: str
    client_msg_no: str
    payload: bytes
    setting: int = 0
    flags: int = 0
    """WKProto header flags of the SEND (red dot, sync once, no persist)."""
    expire: int = 0
    topic: str = ""
    stream_no: str = ""

    @property
    def timestamp_s(self) -> int:
        return self.timestamp_ms // 1000

    def encode(self) -> bytes:
        parts = [
            _MSG_HEAD.pack(
                self.message_id,
                self.message_seq,
                self.timestamp_ms,
                self.setting,
                self.flags,
                self.channel_type,
                self.expire,
            )
        ]
        for s in (self.channel_id, self.from_uid, self.client_msg_no, self.topic, self.stream_no):
            raw = s.encode()
            parts.append(_U16.pack(len(raw)))
            parts.append(raw)
        parts.append(self.payload)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> MessageRecord:
        mid, seq, ts, setting, flags, ctype, expire = _MSG_HEAD.unpack_from(data)
        pos = _MSG_HEAD.size
        strings: list[str] = []
        for _ in range(5):
            (n,) = _U16.unpack_from(data, pos)
            pos += 2
            strings.append(data[pos : pos + n].decode())
            pos += n
        return cls(
            message_id=mid,
            message_seq=seq,
            timestamp_ms=ts,
            channel_id=strings[0],
            channel_type=ctype,
            from_uid=strings[1],
            client_msg_no=strings[2],
            payload=bytes(data[pos:]),
            setting=setting,
            flags=flags,
            expire=expire,
            topic=strings[3],
            stream_no=strings[4],
        )


@dataclass(slots=True)
class ChannelInfo:
    channel_id: str
    channel_type: int
    ban: bool = False
    disband: bool = False
    send_ban: bool = False
    allow_stranger: bool = False
    large: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> ChannelInfo:
        return cls(**json.loads(data))


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """The token a uid registered for one platform (device flag), and its level.

    The token is kept as a keyed hash (``mac`` under the key ``key_id``, with its ``salt``,
    hex; ``node/usertokens.py``). A record without a ``mac`` holds ``token`` itself: an empty
    one after a device quit, or a token stored before hashes (checked as it is, and hashed at
    its next successful login)."""

    token: str
    device_level: int
    mac: str = ""
    salt: str = ""
    key_id: str = ""
    expires_at_ms: int = 0
    """Wall-clock milliseconds after which the token no longer logs in; 0: never."""

    def encode(self) -> bytes:
        d: dict[str, str | int] = {"token": self.token, "device_level": self.device_level}
        if self.mac:
            d.update(mac=self.mac, salt=self.salt, key_id=self.key_id)
        if self.expires_at_ms:
            d["expires_at_ms"] = self.expires_at_ms
        return json.dumps(d).encode()

    @classmethod
    def decode(cls, data: bytes) -> DeviceRecord:
        d = json.loads(data)
        return cls(
            token=d["token"],
            device_level=d["device_level"],
            mac=d.get("mac", ""),
            salt=d.get("salt", ""),
            key_id=d.get("key_id", ""),
            expires_at_ms=d.get("expires_at_ms", 0),
        )

    def to_json(self) -> dict[str, str | int]:
        """As reads answer it (cluster-internal: the gateway node checks CONNECT with it)."""
        return {
            "token": self.token,
            "device_level": self.device_level,
            "mac": self.mac,
            "salt": self.salt,
            "key_id": self.key_id,
            "expires_at_ms": self.expires_at_ms,
        }
