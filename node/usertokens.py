"""User tokens at rest: a keyed hash, never the token (``docs/security.md``, "Tokens at rest").

``/user/token`` hands the token to the node that takes the request, which seals it *before* it
proposes the change: ``mac = HMAC-SHA256(key, salt || token)`` with a random 16-byte ``salt``
of its own choosing, and the Raft entry, every replica's RocksDB and every snapshot hold only
``(key_id, salt, mac)``. Applying stays deterministic: replicas store what they are given.

The key comes from a secret every node of the cluster has: HKDF-SHA256 of ``cluster.password``
(a lone node without one uses the random secret in its data directory, ``node.secret``). Its
``key_id`` (derived alike) goes with each hash, so that during a password change, when a node
also knows ``cluster.password_accepted``, a CONNECT is checked under the key its token was
sealed with. A login under any key but the current one, or of a record from before hashes (the
token in plain text, compared in constant time), seals the token again under the current key
(``rehash``), conditioned on the record being unchanged since it was read (``replaces``): once
every user has logged in during a password change, nothing depends on the old password.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proto.raftchat.peer.v1 import peer_pb2 as pb

from .storage import DeviceRecord

SALT_BYTES = 16
_HKDF_SALT = b"raftchat user tokens"
_PLAIN = b"plain:"
"""``replaces`` of a record that holds its token in plain text: a salted SHA-256 of it (the
replicas must check it without any key), never the token."""


def _hkdf(secret: str, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, _HKDF_SALT, info).derive(secret.encode())


@dataclass(frozen=True)
class TokenKey:
    key_id: str
    key: bytes = b""

    @classmethod
    def derive(cls, secret: str) -> TokenKey:
        key_id = _hkdf(secret, b"raftchat user token key id v1")[:8].hex()
        return cls(key_id, _hkdf(secret, b"raftchat user token key v1"))

    def mac(self, salt: bytes, token: str) -> bytes:
        return hmac.new(self.key, salt + token.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"TokenKey({self.key_id!r})"  # never the key


class Verdict(enum.Enum):
    OK = "ok"
    WRONG = "wrong token"
    """Also: no token, a blanked token (device quit), a key this node does not know."""
    EXPIRED = "token expired"


@dataclass(frozen=True)
class Checked:
    verdict: Verdict
    rehash: bool = False
    """Right, but not sealed under the current key: seal it again (``TokenKeys.rehash``)."""
    unknown_key: bool = False


class TokenKeys:
    """The keys of a node: the first seals, all of them check."""

    def __init__(
        self,
        secrets: Iterable[str],
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        keys = [TokenKey.derive(s) for s in secrets if s]
        if not keys:
            raise ValueError("user tokens need a secret to derive their key from")
        self.current = keys[0]
        self._by_id: dict[str, TokenKey] = {}
        for k in keys:
            self._by_id.setdefault(k.key_id, k)
        self._random = random_bytes

    def seal(
        self, uid: str, device_flag: int, token: str, device_level: int, expires_at_ms: int = 0
    ) -> pb.DeviceToken:
        """The change that stores ``token`` for a device (an empty token blanks it)."""
        if not token:
            return pb.DeviceToken(uid=uid, device_flag=device_flag, device_level=device_level)
        salt = self._random(SALT_BYTES)
        return pb.DeviceToken(
            uid=uid,
            device_flag=device_flag,
            device_level=device_level,
            token_mac=self.current.mac(salt, token),
            token_salt=salt,
            token_key_id=self.current.key_id,
            expires_at_ms=expires_at_ms,
        )

    def check(self, device: dict[str, Any] | None, presented: str, now_ms: int) -> Checked:
        """Whether ``presented`` logs in to the device record ``device`` (a read's answer,
        ``DeviceRecord.to_json``) at wall-clock ``now_ms``."""
        if device is None:
            return Checked(Verdict.WRONG)
        mac = device.get("mac") or ""
        if mac:
            key = self._by_id.get(device.get("key_id") or "")
            if key is None:
                return Checked(Verdict.WRONG, unknown_key=True)
            try:
                salt, want = bytes.fromhex(device["salt"]), bytes.fromhex(mac)
            except (KeyError, TypeError, ValueError):
                return Checked(Verdict.WRONG)
            right = hmac.compare_digest(key.mac(salt, presented), want)
            stale = key is not self.current
        else:
            stored = str(device.get("token") or "")
            right = bool(stored) and hmac.compare_digest(stored.encode(), presented.encode())
            stale = True  # plain text from before hashes
        if not right:
            return Checked(Verdict.WRONG)
        expires = int(device.get("expires_at_ms") or 0)
        if expires and now_ms >= expires:
            return Checked(Verdict.EXPIRED)
        return Checked(Verdict.OK, rehash=stale)

    def rehash(
        self, uid: str, device_flag: int, device: dict[str, Any], presented: str
    ) -> pb.DeviceToken:
        """Seal a token that just logged in under the current key, as a change that applies
        only over the record it was checked against (the app may have set another since)."""
        op = self.seal(
            uid,
            device_flag,
            presented,
            int(device["device_level"]),
            int(device.get("expires_at_ms") or 0),
        )
        op.replaces = fingerprint(device, self._random)
        return op


def fingerprint(device: dict[str, Any], random_bytes: Callable[[int], bytes]) -> bytes:
    """What ``replaces`` says of a record: its mac, or a salted digest of a plain token."""
    if device.get("mac"):
        return bytes.fromhex(device["mac"])
    salt = random_bytes(SALT_BYTES)
    digest = hashlib.sha256(salt + str(device.get("token") or "").encode()).digest()
    return _PLAIN + salt + digest


def still_the_same(record: DeviceRecord | None, replaces: bytes) -> bool:
    """Apply side (deterministic, no key needed): whether ``record`` is the one a re-hash
    was computed from."""
    if record is None:
        return False
    if record.mac:
        return hmac.compare_digest(bytes.fromhex(record.mac), replaces)
    if not replaces.startswith(_PLAIN) or len(replaces) != len(_PLAIN) + SALT_BYTES + 32:
        return False
    salt = replaces[len(_PLAIN) : len(_PLAIN) + SALT_BYTES]
    digest = hashlib.sha256(salt + record.token.encode()).digest()
    return hmac.compare_digest(digest, replaces[len(_PLAIN) + SALT_BYTES :])


def record_of(d: pb.DeviceToken) -> DeviceRecord:
    """The stored record of a change: the hash as given, hex in the JSON record."""
    if d.token_mac:
        return DeviceRecord(
            token="",
            device_level=d.device_level,
            mac=d.token_mac.hex(),
            salt=d.token_salt.hex(),
            key_id=d.token_key_id,
            expires_at_ms=d.expires_at_ms,
        )
    return DeviceRecord(d.token, d.device_level, expires_at_ms=d.expires_at_ms)
