"""How raftchat frames pysyncobj's Raft messages: authenticated, neither encrypted nor compressed.

pysyncobj pickles every Raft message, compresses it with zlib and, when the cluster has a
password, wraps it in a Fernet token (AES-CBC, HMAC-SHA256, base64) that the receiver checks
twice before it unpickles. Per AppendEntries of a few hundred bytes that was ~65 us of CPU on
each side of every hop (zlib alone ~40 us), measured in ADR 009. What the password is for is
authentication: nobody outside the cluster may make a node unpickle a frame. So a frame is

    version (1 byte) | timestamp (8 bytes, big-endian) | pickle | HMAC-SHA256 (32 bytes)

with the MAC over everything before it, checked in constant time before pysyncobj unpickles.
While the cluster password changes, a node also accepts frames signed with its second, accepted
password (``cluster.password_accepted``), but signs with ``cluster.password`` only: pysyncobj
then gets ``(password, accepted)`` where it would get the password.
The timestamp keeps pysyncobj's check that timestamps never go back on a connection, and its
per-connection random keys still reject frames replayed from another connection. Raft traffic
is no longer confidential; neither was the peer gRPC traffic, which carries the same messages
(docs/operations.md: keep cluster links on a private network).

``install()`` patches pysyncobj 0.3.17 (process-wide, idempotent): ``getEncryptor`` returns a
``FrameAuthenticator`` (the three methods pysyncobj calls on its Fernet), its TCP
connections' zlib becomes the identity, and its connections are ``guard.GuardedConnection``s,
which bound what a connection may send before and after it authenticates. Every node of a
cluster must run the same framing.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct

import pysyncobj.syncobj as _syncobj
import pysyncobj.tcp_connection as _tcp_connection

from . import guard

_VERSION = 1
_HEAD = struct.Struct(">BQ")
_MAC_LEN = 32
_SALT = b"raftchat raft frames v1"
_KDF_ROUNDS = 100_000


class FrameAuthError(Exception):
    """A frame that is not from a cluster member (wrong MAC, version or length)."""


class FrameAuthenticator:
    """Signs and checks Raft frames with a key derived from the cluster password."""

    def __init__(self, key: bytes, accepted: tuple[bytes, ...] = ()) -> None:
        self._key = key
        self._keys = (key, *accepted)
        # pysyncobj checks a frame twice (extract_timestamp, then decrypt) with the same object.
        self._checked: bytes | None = None

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        signed = _HEAD.pack(_VERSION, current_time) + data
        return signed + hmac.digest(self._key, signed, "sha256")

    def extract_timestamp(self, token: bytes) -> int:
        self._check(token)
        return int(_HEAD.unpack_from(token)[1])

    def decrypt(self, token: bytes) -> bytes:
        self._check(token)
        return token[_HEAD.size : -_MAC_LEN]

    def _check(self, token: bytes) -> None:
        if token is self._checked:
            return
        if len(token) < _HEAD.size + _MAC_LEN or token[0] != _VERSION:
            raise FrameAuthError("not a raftchat Raft frame")
        signed, given = token[:-_MAC_LEN], token[-_MAC_LEN:]
        # Every key is tried, so the time taken does not say which one matched.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(hmac.digest(key, signed, "sha256"), given)
        if not ok:
            raise FrameAuthError("bad frame MAC")
        self._checked = token


@functools.lru_cache(maxsize=8)
def frame_key(password: str | bytes) -> bytes:
    """The MAC key: a slow KDF of the password (once per process, not once per group)."""
    raw = password if isinstance(password, bytes) else password.encode()
    return hashlib.pbkdf2_hmac("sha256", raw, _SALT, _KDF_ROUNDS)


def authenticator_for(password: str | bytes | tuple[str, ...]) -> FrameAuthenticator:
    """For pysyncobj's ``password``: one password, or (signing password, accepted ones)."""
    if isinstance(password, tuple):
        first, *accepted = password
        return FrameAuthenticator(frame_key(first), tuple(frame_key(p) for p in accepted))
    return FrameAuthenticator(frame_key(password))


class _Uncompressed:
    """Stands in for the zlib module in pysyncobj's TCP connections."""

    @staticmethod
    def compress(data: bytes, _level: int = -1) -> bytes:
        return data

    @staticmethod
    def decompress(data: bytes) -> bytes:
        return data


def install() -> None:
    _syncobj.getEncryptor = authenticator_for
    _tcp_connection.zlib = _Uncompressed
    guard.install()
