"""How raftchat frames pysyncobj's Raft messages: encrypted and authenticated (AES-256-GCM).

pysyncobj pickles every Raft message, compresses it with zlib and, when the cluster has a
password, wraps it in a Fernet token (AES-CBC, HMAC-SHA256, base64) that the receiver checks
twice before it unpickles. Per AppendEntries of a few hundred bytes that was ~65 us of CPU on
each side of every hop (zlib alone ~40 us), measured in ADR 009. raftchat's frame is

    version (1 byte) | timestamp (8, big-endian) | key id (16) | nonce (12) | ciphertext | tag (16)

sealed with AES-256-GCM, the version, timestamp and key id as associated data. The tag
authenticates the whole frame and is checked before pysyncobj unpickles anything, so nobody
without the cluster password can make a node unpickle a frame, nor read one (ADR 009 kept the
frames in clear text; ADR 016 measures the change: no more CPU than the HMAC).

Keys. The password goes through a slow KDF once per process (``frame_key``: PBKDF2, since a
captured frame lets anyone test password guesses offline). Each sender (one ``FrameCipher``
per Raft group and process) picks a random 128-bit key id and seals with
``HKDF(master, salt=key id)``; its nonces count up from 1. So a nonce never repeats under a key,
however long the password stays the same and however many frames the cluster sends, which
random nonces under one long-lived key could not promise. A receiver derives a sender's key
once and keeps it (``MAX_KEYS`` at most) after the first frame that it opened.

A password being changed: a receiver also opens frames under ``cluster.password_accepted``
(tried only for a key id it does not know yet), while senders seal under ``cluster.password``
only. pysyncobj then gets ``(password, accepted)`` where it would get the password.

Replays: pysyncobj's check that timestamps never go back on a connection stays (the timestamp
is authenticated), and its per-connection random keys, now inside the ciphertext, still reject
frames copied from another connection (``guard.py``).

``install()`` patches pysyncobj 0.3.17 (process-wide, idempotent, through
``pysyncobj_seam.install``): ``getEncryptor`` returns a ``FrameCipher`` (the three methods
pysyncobj calls on its Fernet), its TCP connections' zlib becomes the identity, and its
connections are ``guard.GuardedConnection``s, which bound what a connection may send before
and after it authenticates. Every node of a cluster must run the
same framing: a frame of another version is refused, naming it.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import guard
from . import pysyncobj_seam as seam

VERSION = 2
"""1 was ``version | timestamp | pickle | HMAC-SHA256``: authenticated, in clear text."""
_HEAD = struct.Struct(">BQ16s12s")  # version, timestamp, key id, nonce
_AAD_LEN = 1 + 8 + 16
_TAG_LEN = 16
OVERHEAD = _HEAD.size + _TAG_LEN
"""Bytes a frame adds to its pickle."""
_SALT = b"raftchat raft frames v2"
_KDF_ROUNDS = 100_000
_HKDF_INFO = b"raftchat raft frame key v2"
MAX_KEYS = 256
"""Senders' keys a receiver keeps. A node's group hears from its replicas' current processes,
a few; a key of a restarted sender is derived again when it is needed (~5 us)."""


class FrameAuthError(Exception):
    """A frame that is not from a cluster member (wrong key, tag, version or length)."""


class FrameCipher:
    """Seals and opens Raft frames with keys derived from the cluster password. One per Raft
    group (pysyncobj's encryptor), used on its driver thread."""

    def __init__(self, master: bytes, accepted: tuple[bytes, ...] = ()) -> None:
        self._master = master
        self._masters = (master, *accepted)
        self._key_id = os.urandom(16)
        self._sealer = AESGCM(_subkey(master, self._key_id))
        self._nonces = itertools.count(1)
        self._openers: dict[bytes, AESGCM] = {}
        # pysyncobj opens a frame twice (extract_timestamp, then decrypt) with the same object:
        # the second call gets the plaintext of the first.
        self._opened: tuple[bytes, int, bytes] | None = None

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytearray:
        nonce = next(self._nonces).to_bytes(12, "big")
        # One buffer for the whole frame: a large AppendEntries is not copied again.
        frame = bytearray(_HEAD.size + len(data) + _TAG_LEN)
        _HEAD.pack_into(frame, 0, VERSION, current_time, self._key_id, nonce)
        aad = bytes(frame[:_AAD_LEN])
        self._sealer.encrypt_into(nonce, data, aad, memoryview(frame)[_HEAD.size :])
        return frame

    def extract_timestamp(self, token: bytes) -> int:
        return self._open(token)[1]

    def decrypt(self, token: bytes) -> bytes:
        return self._open(token)[2]

    def _open(self, token: bytes) -> tuple[bytes, int, bytes]:
        opened = self._opened
        if opened is not None and opened[0] is token:
            return opened
        if len(token) < OVERHEAD or token[0] != VERSION:
            if token[:1] == b"\x01":
                raise FrameAuthError(
                    "a frame of version 1 (an older raftchat's HMAC framing): every node of a "
                    "cluster must run the same framing"
                )
            raise FrameAuthError("not a raftchat Raft frame")
        _version, stamp, key_id, nonce = _HEAD.unpack_from(token)
        sealed, aad = memoryview(token)[_HEAD.size :], token[:_AAD_LEN]
        opener = self._openers.get(key_id)
        known = opener is not None
        data: bytes | None = None
        if opener is not None:
            try:
                data = opener.decrypt(nonce, sealed, aad)
            except InvalidTag:
                raise FrameAuthError("bad frame tag") from None
        else:
            # A new sender: its key comes from the password or, while it changes, the accepted
            # one (docs/security.md, "Rotating secrets").
            for master in self._masters:
                opener = AESGCM(_subkey(master, key_id))
                try:
                    data = opener.decrypt(nonce, sealed, aad)
                    break
                except InvalidTag:
                    continue
            if data is None:
                raise FrameAuthError("bad frame tag")
        assert opener is not None
        if not known:
            # Kept only once a frame under it has opened: junk cannot crowd out real keys.
            if len(self._openers) >= MAX_KEYS:
                del self._openers[next(iter(self._openers))]
            self._openers[key_id] = opener
        self._opened = (token, int(stamp), data)
        return self._opened


def _subkey(master: bytes, key_id: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, key_id, _HKDF_INFO).derive(master)


@functools.lru_cache(maxsize=8)
def frame_key(password: str | bytes) -> bytes:
    """The master key: a slow KDF of the password (once per process, not once per group)."""
    raw = password if isinstance(password, bytes) else password.encode()
    return hashlib.pbkdf2_hmac("sha256", raw, _SALT, _KDF_ROUNDS)


def authenticator_for(password: str | bytes | tuple[str, ...]) -> FrameCipher:
    """A new sender and receiver of frames (pysyncobj's ``getEncryptor``) under ``password``:
    one password, or (the sealing password, accepted ones)."""
    if isinstance(password, tuple):
        first, *accepted = password
        return FrameCipher(frame_key(first), tuple(frame_key(p) for p in accepted))
    return FrameCipher(frame_key(password))


class _Uncompressed:
    """Stands in for the zlib module in pysyncobj's TCP connections."""

    @staticmethod
    def compress(data: bytes, _level: int = -1) -> bytes:
        return data

    @staticmethod
    def decompress(data: bytes) -> bytes:
        return data


def install() -> None:
    seam.install(
        get_encryptor=authenticator_for,
        compression=_Uncompressed,
        connection=guard.GuardedConnection,
        server=guard.GuardedServer,
    )
