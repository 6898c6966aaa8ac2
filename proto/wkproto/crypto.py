"""WKProto payload encryption: X25519 key agreement, AES-128-CBC with PKCS#7, base64 on the wire,
and the msgKey integrity tag (WuKongIM's scheme, reproduced from its documented rules).

* aes_key = the first 16 characters of hex(MD5(base64(shared secret))), used as ASCII bytes;
* aes_iv  = the 16-character salt the server sends in CONNACK, constant for the session;
* payloads travel as the base64 text of the ciphertext;
* msg_key = hex(MD5(base64(AES(sign string)))).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import string

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import CryptoError

SALT_ALPHABET = string.ascii_letters + string.digits
SALT_LENGTH = 16


def new_salt() -> str:
    return "".join(secrets.choice(SALT_ALPHABET) for _ in range(SALT_LENGTH))


class KeyPair:
    """A fresh X25519 key pair; one per connection, no long-term server key."""

    __slots__ = ("_private",)

    def __init__(self, private_bytes: bytes | None = None) -> None:
        self._private = (
            X25519PrivateKey.from_private_bytes(private_bytes)
            if private_bytes is not None
            else X25519PrivateKey.generate()
        )

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self._private.public_key().public_bytes_raw()).decode("ascii")

    def aes_key(self, peer_public_b64: str) -> bytes:
        """Derive the 16-byte AES key from the peer's base64 public key."""
        try:
            raw = base64.b64decode(peer_public_b64, validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError("client key is not base64") from None
        if len(raw) != 32:
            raise CryptoError(f"client key has {len(raw)} bytes, X25519 needs 32")
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(raw))
        except ValueError as e:  # an all-zero shared secret (low-order point)
            raise CryptoError(f"key agreement failed: {e}") from None
        digest = hashlib.md5(base64.b64encode(shared)).hexdigest()
        return digest[:16].encode("ascii")


class SessionCipher:
    """AES-128-CBC for one session. The IV is the CONNACK salt and never changes."""

    __slots__ = ("_cipher", "iv", "key")

    def __init__(self, key: bytes, iv: bytes) -> None:
        if len(key) != 16 or len(iv) != 16:
            raise CryptoError("AES key and IV must be 16 bytes")
        self.key = key
        self.iv = iv
        # Built once per session: building it per message was half the cost of an AES call.
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv))

    def _aes(self, plain: bytes) -> bytes:
        padder = padding.PKCS7(128).padder()
        data = padder.update(plain) + padder.finalize()
        enc = self._cipher.encryptor()
        return enc.update(data) + enc.finalize()

    def encrypt(self, plain: bytes) -> bytes:
        """Plain bytes -> base64 text of the ciphertext (what goes on the wire)."""
        return base64.b64encode(self._aes(plain))

    def decrypt(self, wire: bytes) -> bytes:
        """Base64 text of a ciphertext -> plain bytes. Raises ``CryptoError``."""
        try:
            data = base64.b64decode(wire, validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError("payload is not base64") from None
        if not data or len(data) % 16:
            raise CryptoError("ciphertext is not a whole number of AES blocks")
        dec = self._cipher.decryptor()
        padded = dec.update(data) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            raise CryptoError("bad PKCS#7 padding") from None

    def msg_key(self, sign: bytes) -> str:
        return hashlib.md5(base64.b64encode(self._aes(sign))).hexdigest()


def send_sign(
    client_seq: int, client_msg_no: str, channel_id: str, channel_type: int, payload: bytes
) -> bytes:
    """The SEND sign string; ``channel_id`` as the client sent it, ``payload`` as on the wire."""
    head = f"{client_seq}{client_msg_no}{channel_id}{channel_type}".encode()
    return head + payload


def recv_sign(
    message_id: int,
    message_seq: int,
    client_msg_no: str,
    timestamp: int,
    from_uid: str,
    channel_id: str,
    channel_type: int,
    payload: bytes,
) -> bytes:
    """The RECV sign string, with ``channel_id`` in the recipient's view."""
    head = (
        f"{message_id}{message_seq}{client_msg_no}{timestamp}{from_uid}{channel_id}{channel_type}"
    ).encode()
    return head + payload
