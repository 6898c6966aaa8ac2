"""Authentication of a long-lived signed peer stream (``cluster/peer_stream.py``).

A stream opens like any peer call (``cluster/peerauth.py``): its credential covers the method,
the recipient, the time, a fresh nonce and, as the call's request bytes, the sender's *epoch*
(16 random bytes a sender picks once per peer, sent as ``EPOCH_METADATA_KEY``). So a stranger
cannot open one, and an opening cannot be replayed. Both ends then derive the stream's key from
the password key that signed the opening and its nonce; every frame carries an HMAC under that
key of its sequence number and body, every acknowledgement one of its sequence number, and every
frame sent back (a call's answer) one of its own number and body. A frame cannot be altered,
moved to another stream or direction, or played twice in one (the receiver wants each frame's
number to be one more than the last), and an acknowledgement cannot be forged.
"""

from __future__ import annotations

import hmac

from cluster.peerauth import Credential, PeerKeys, mac

EPOCH_METADATA_KEY = "x-raftchat-epoch"
EPOCH_BYTES = 16
_SEQ_BYTES = 8


def stream_key(key: bytes, method: str, nonce_hex: str) -> bytes:
    """The key of the stream of ``method`` opened with nonce ``nonce_hex`` under ``key``."""
    return hmac.digest(key, f"v1-stream\n{method}\n{nonce_hex}".encode(), "sha256")


def frame_mac(skey: bytes, seq: int, body: bytes) -> bytes:
    return hmac.digest(skey, b"F" + seq.to_bytes(_SEQ_BYTES, "big") + body, "sha256")


def ack_mac(skey: bytes, seq: int) -> bytes:
    return hmac.digest(skey, b"A" + seq.to_bytes(_SEQ_BYTES, "big"), "sha256")


def frame_matches(skey: bytes, seq: int, body: bytes, tag: bytes) -> bool:
    return hmac.compare_digest(frame_mac(skey, seq, body), tag)


def ack_matches(skey: bytes, seq: int, tag: bytes) -> bool:
    return hmac.compare_digest(ack_mac(skey, seq), tag)


def answer_mac(skey: bytes, seq: int, body: bytes) -> bytes:
    """A frame the receiver sends back (a call's answer), numbered on its own."""
    return hmac.digest(skey, b"R" + seq.to_bytes(_SEQ_BYTES, "big") + body, "sha256")


def answer_matches(skey: bytes, seq: int, body: bytes, tag: bytes) -> bool:
    return hmac.compare_digest(answer_mac(skey, seq, body), tag)


def opening_key(keys: PeerKeys, method: str, cred: Credential, digest: bytes) -> bytes | None:
    """The key of ``keys`` that signed an opening whose credential already passed
    ``PeerVerifier.verify`` (with a second, accepted password, either may have)."""
    for key in keys.keys:
        expected = mac(key, method, cred.recipient, cred.time_ms, cred.nonce_hex, digest)
        if hmac.compare_digest(expected, cred.tag):
            return key
    return None


def parse_epoch(value: object) -> bytes | None:
    """The epoch of an opening's metadata value (hex), or None when it is not one."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or len(value) != 2 * EPOCH_BYTES:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None
