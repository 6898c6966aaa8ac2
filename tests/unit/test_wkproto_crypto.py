"""WKProto payload crypto: the section 1.10 vector, round trips and every refusal path."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from proto.wkproto import CryptoError, ProtocolError
from proto.wkproto.crypto import KeyPair, SessionCipher, new_salt, recv_sign, send_sign

SETTINGS = settings(derandomize=True, deadline=None, max_examples=200)

CLIENT_PRIVATE = bytes(range(0x01, 0x21))
SERVER_PRIVATE = bytes(range(0x21, 0x41))
CLIENT_KEY = "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw="
SERVER_KEY = "WGmv9FBUlzLLqu1eXfmzCm2jHLDldCutWtShp2jxpns="
SHARED_B64 = "qE3Hw8jwWLGy3EzR6bXcCnmH+ItqlWTN4zkfxCEVnnc="
SHARED_MD5 = "8e65549ac3e59ba41680cb1ebc937b38"
AES_KEY = b"8e65549ac3e59ba4"
SALT = b"abcdefghijklmnop"
PLAIN = b'{"type":1,"content":"hi"}'
WIRE = b"osCCSwLzwq49FmcOr6wm5LNHsBiw3mVITLODizLFr/M="
SEND_MSG_KEY = "1d7aa75fa0aca0cefb37766a2a3a645f"
RECV_MSG_KEY = "e2766f4b40897ec418fb67926ae5c98d"


@pytest.fixture
def cipher() -> SessionCipher:
    return SessionCipher(AES_KEY, SALT)


# --- the section 1.10 vector ----------------------------------------------------------------


def test_public_keys() -> None:
    assert KeyPair(CLIENT_PRIVATE).public_b64 == CLIENT_KEY
    assert KeyPair(SERVER_PRIVATE).public_b64 == SERVER_KEY


def test_shared_secret_and_its_digest() -> None:
    # Independent of KeyPair: the raw X25519 agreement and the MD5 the key is cut from.
    shared = X25519PrivateKey.from_private_bytes(SERVER_PRIVATE).exchange(
        X25519PublicKey.from_public_bytes(base64.b64decode(CLIENT_KEY))
    )
    assert base64.b64encode(shared).decode() == SHARED_B64
    assert hashlib.md5(SHARED_B64.encode()).hexdigest() == SHARED_MD5


def test_aes_key_is_the_same_on_both_sides() -> None:
    assert KeyPair(SERVER_PRIVATE).aes_key(CLIENT_KEY) == AES_KEY
    assert KeyPair(CLIENT_PRIVATE).aes_key(SERVER_KEY) == AES_KEY
    assert SHARED_MD5[:16].encode() == AES_KEY


def test_payload_ciphertext(cipher: SessionCipher) -> None:
    assert cipher.encrypt(PLAIN) == WIRE
    assert cipher.decrypt(WIRE) == PLAIN


def test_send_sign_string_and_msg_key(cipher: SessionCipher) -> None:
    sign = send_sign(1, "m1", "u2", 1, WIRE)
    assert sign == b"1m1u21" + WIRE
    assert cipher.msg_key(sign) == SEND_MSG_KEY


def test_recv_sign_string_and_msg_key(cipher: SessionCipher) -> None:
    sign = recv_sign(123_456_789, 7, "m1", 1_700_000_000, "u1", "u1", 1, WIRE)
    assert sign == b"1234567897m11700000000u1u11" + WIRE
    assert cipher.msg_key(sign) == RECV_MSG_KEY


def test_sign_strings_encode_text_as_utf8() -> None:
    assert send_sign(0, "é", "频道", 2, b"") == "0é频道2".encode()
    assert recv_sign(-1, 0, "", -5, "", "c", 1, b"\xff") == b"-10-5c1\xff"


# --- round trips ----------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=600))
def test_encrypt_decrypt_round_trip(payload: bytes) -> None:
    cipher = SessionCipher(AES_KEY, SALT)
    wire = cipher.encrypt(payload)
    raw = base64.b64decode(wire, validate=True)
    # PKCS#7 always pads, a whole extra block when the input is already aligned.
    assert len(raw) == (len(payload) // 16 + 1) * 16
    assert cipher.decrypt(wire) == payload


@SETTINGS
@given(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=16, max_size=16),
    st.binary(max_size=100),
)
def test_key_agreement_and_cipher_between_two_peers(
    client_private: bytes, server_private: bytes, iv: bytes, payload: bytes
) -> None:
    client, server = KeyPair(client_private), KeyPair(server_private)
    key = server.aes_key(client.public_b64)
    assert key == client.aes_key(server.public_b64)
    assert re.fullmatch(rb"[0-9a-f]{16}", key)
    wire = SessionCipher(key, iv).encrypt(payload)
    assert SessionCipher(client.aes_key(server.public_b64), iv).decrypt(wire) == payload


@SETTINGS
@given(st.binary(max_size=200))
def test_msg_key_is_lowercase_hex_md5(sign: bytes) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", SessionCipher(AES_KEY, SALT).msg_key(sign))


def test_msg_key_depends_on_key_iv_and_sign(cipher: SessionCipher) -> None:
    sign = send_sign(1, "m1", "u2", 1, WIRE)
    assert cipher.msg_key(send_sign(2, "m1", "u2", 1, WIRE)) != SEND_MSG_KEY
    assert SessionCipher(b"0" * 16, SALT).msg_key(sign) != SEND_MSG_KEY
    assert SessionCipher(AES_KEY, b"0" * 16).msg_key(sign) != SEND_MSG_KEY


def test_fresh_key_pairs_differ() -> None:
    assert KeyPair().public_b64 != KeyPair().public_b64


# --- refusals -------------------------------------------------------------------------------


def test_crypto_error_is_a_protocol_error() -> None:
    assert issubclass(CryptoError, ProtocolError)


@pytest.mark.parametrize(
    "wire",
    [
        b"not base64!",
        b"osCCSwLzwq49FmcOr6wm5LNHsBiw3mVITLODizLFr/M",  # missing padding
        b"osCCSwLzwq49FmcO\nr6wm5LNHsBiw3mVITLODizLFr/M=",  # a newline is not tolerated
        "ö".encode(),
    ],
)
def test_decrypt_refuses_non_base64(cipher: SessionCipher, wire: bytes) -> None:
    with pytest.raises(CryptoError):
        cipher.decrypt(wire)


@pytest.mark.parametrize("size", [0, 1, 15, 17, 31, 33])
def test_decrypt_refuses_partial_blocks(cipher: SessionCipher, size: int) -> None:
    with pytest.raises(CryptoError):
        cipher.decrypt(base64.b64encode(bytes(size)))


def _raw_cbc(block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(AES_KEY), modes.CBC(SALT)).encryptor()
    return base64.b64encode(enc.update(block) + enc.finalize())


@pytest.mark.parametrize(
    "plain_block",
    [
        bytes(16),  # pad byte 0
        b"A" * 15 + b"\x11",  # pad byte 17 > block size
        b"A" * 15 + b"\x02",  # says two bytes of 0x02, but the 15th is 'A'
        b"A" * 12 + b"\x04\x04\x03\x04",
    ],
)
def test_decrypt_refuses_bad_padding(cipher: SessionCipher, plain_block: bytes) -> None:
    with pytest.raises(CryptoError):
        cipher.decrypt(_raw_cbc(plain_block))


def test_decrypt_accepts_a_correct_manual_padding(cipher: SessionCipher) -> None:
    # Guards the bad-padding cases above: the same construction with valid padding decrypts.
    assert cipher.decrypt(_raw_cbc(b"A" * 14 + b"\x02\x02")) == b"A" * 14


@pytest.mark.parametrize(
    "client_key",
    [
        "",  # empty
        "not base64!",
        "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw",  # padding missing
        base64.b64encode(bytes(range(31))).decode(),  # 31 bytes
        base64.b64encode(bytes(range(33))).decode(),  # 33 bytes
        base64.b64encode(bytes(range(64))).decode(),  # 64 bytes (v2 would cut to 32)
        base64.b64encode(bytes(32)).decode(),  # low-order point: all-zero shared secret
    ],
)
def test_bad_client_key_raises_crypto_error(client_key: str) -> None:
    with pytest.raises(CryptoError):
        KeyPair(SERVER_PRIVATE).aes_key(client_key)


@pytest.mark.parametrize(("key", "iv"), [(b"k" * 15, SALT), (AES_KEY, b"i" * 17), (b"", b"")])
def test_session_cipher_refuses_wrong_sizes(key: bytes, iv: bytes) -> None:
    with pytest.raises(CryptoError):
        SessionCipher(key, iv)


# --- salt -----------------------------------------------------------------------------------


def test_new_salt_shape() -> None:
    salts = {new_salt() for _ in range(200)}
    for salt in salts:
        assert re.fullmatch(r"[a-zA-Z0-9]{16}", salt)
        assert len(salt.encode()) == 16  # usable verbatim as an AES IV
    assert len(salts) == 200  # 62**16 possibilities: a repeat means the salt is not random
