"""The peer credential: a MAC per call over method, time, nonce and body, that cannot be replayed.

Every call of the peer service carries one metadata value under ``METADATA_KEY``::

    v1.<unix time in ms>.<nonce: 16 random bytes, hex>.<HMAC-SHA256, hex>.<recipient>

with the MAC, under a key derived from the cluster password, over the method's full path
(``/raftchat.peer.v1.Peer/Deliver``), the recipient (the host the caller dialled, as in the
cluster map), the time, the nonce and the SHA-256 of the request's bytes as they travelled.
The receiver accepts a call when

1. the MAC is right under one of its keys (constant-time comparison), so the call comes from a
   holder of the password and neither method, recipient nor body was changed on the way;
2. the recipient is this node (one of the names it was given: its ``node.host``), so a call
   captured on its way to one node cannot be played to another, whose nonce memory has never
   seen it;
3. the time is within ``WINDOW_S`` of its own clock, so a captured call is worthless once the
   window has passed (the nodes' clocks must agree to well within the window: NTP);
4. the nonce is not among those it has accepted within the window, so a captured call cannot
   be played again while it is fresh either.

One exception to 2: a loopback recipient matches a node on loopback, as in ``cluster/hosts.py``
(nodes of one machine, ``raftchat dev`` and the tests; traffic there never crosses a network).

A node also refuses calls stamped before it started (``PeerVerifier``): its nonce memory
begins empty then.

Only calls that passed 1 to 3 enter the nonce memory, so nobody without the password can
grow it. It is bounded all the same (``MAX_NONCES``): beyond that, the oldest entries go, and
the node from then on refuses calls stamped no later than the newest time it has forgotten,
since it could no longer tell their replays. Under a flood of genuine calls the window that is
honoured shrinks instead of the memory growing; at the limit's default a node would need more
than ~8,700 calls per second, sustained, before a call less than half a minute old is refused.

The key: the password is stretched once (PBKDF2, as for the Raft frames, so that testing a
guessed password against a captured call costs as much as against a captured frame), then
HKDF gives a key for this purpose only. A second, *accepted* password (``cluster.
password_accepted``) is checked too but never signs: that is how the password changes on a
running cluster (``docs/operations.md``).

Pure functions plus one stateful class (``PeerVerifier``, the nonce memory), with the clock
passed in for tests. The verifier is not thread-safe: the gRPC server uses it from its asyncio
thread only.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

METADATA_KEY = "x-raftchat-peer"
VERSION = "v1"
WINDOW_S = 30.0
"""How far a call's time may be from the receiver's clock, either way."""
MAX_NONCES = 1 << 18
"""Nonces remembered at most (~40 MB at worst; measured in ``tests/unit/test_peerauth.py``)."""
NONCE_BYTES = 16
MAX_RECIPIENT = 255
_STRETCH_SALT = b"raftchat peer calls v1"
_STRETCH_ROUNDS = 100_000
_HKDF_INFO = b"raftchat peer call MAC v1"


@functools.lru_cache(maxsize=8)
def peer_key(password: str) -> bytes:
    """The MAC key of ``password`` (the slow part runs once per process and password)."""
    stretched = hashlib.pbkdf2_hmac("sha256", password.encode(), _STRETCH_SALT, _STRETCH_ROUNDS)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(stretched)


@dataclass(frozen=True)
class PeerKeys:
    """The keys of one node: it signs with ``signing`` and accepts calls under any of ``keys``."""

    signing: bytes
    keys: tuple[bytes, ...]

    @classmethod
    def of(cls, password: str, accepted: Sequence[str] = ()) -> PeerKeys:
        if not password:
            raise ValueError("the peer credential needs a password")
        key = peer_key(password)
        others = tuple(peer_key(p) for p in accepted if p and p != password)
        return cls(key, (key, *others))


def body_digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def recipient_of(target: str) -> str:
    """The recipient a call to ``target`` ("host:port", IPv6 in brackets) names: its host,
    lower case, without brackets."""
    host = target.rsplit(":", 1)[0] if ":" in target else target
    return host.strip("[]").lower()


def _same_recipient(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        ip_a, ip_b = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    return ip_a == ip_b or (ip_a.is_loopback and ip_b.is_loopback)


def mac(
    key: bytes, method: str, recipient: str, time_ms: int, nonce_hex: str, digest: bytes
) -> str:
    """The MAC of one call. Every field but the digest is ASCII without a line break."""
    signed = f"{VERSION}\n{method}\n{recipient}\n{time_ms}\n{nonce_hex}\n".encode() + digest
    return hmac.digest(key, signed, "sha256").hex()


def sign(
    keys: PeerKeys,
    method: str,
    body: bytes,
    *,
    to: str,
    now: float | None = None,
    nonce: bytes | None = None,
) -> str:
    """The metadata value for a call of ``method`` to ``to`` (``recipient_of`` the target)
    whose request is exactly ``body``."""
    if not to or len(to) > MAX_RECIPIENT or not to.isascii() or not to.isprintable():
        raise ValueError(f"not a recipient: {to!r}")
    time_ms = int((time.time() if now is None else now) * 1000)
    nonce_hex = (secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce).hex()
    tag = mac(keys.signing, method, to, time_ms, nonce_hex, body_digest(body))
    return f"{VERSION}.{time_ms}.{nonce_hex}.{tag}.{to}"


@dataclass(frozen=True)
class Credential:
    time_ms: int
    nonce: bytes
    nonce_hex: str
    tag: str
    recipient: str


def parse(value: str) -> Credential | None:
    """The fields of a metadata value; None when it is not one."""
    parts = value.split(".", 4)  # the recipient, last, may hold dots
    if len(parts) != 5 or parts[0] != VERSION:
        return None
    _, time_text, nonce_hex, tag, recipient = parts
    if not (time_text.isascii() and time_text.isdigit() and len(time_text) <= 15):
        return None
    if not (0 < len(recipient) <= MAX_RECIPIENT and recipient.isascii()):
        return None
    if not recipient.isprintable():
        return None
    if len(nonce_hex) != 2 * NONCE_BYTES or len(tag) != 64:
        return None
    try:
        nonce = bytes.fromhex(nonce_hex)
        bytes.fromhex(tag)
    except ValueError:
        return None
    return Credential(int(time_text), nonce, nonce_hex.lower(), tag.lower(), recipient)


def mac_matches(keys: PeerKeys, method: str, cred: Credential, digest: bytes) -> bool:
    """Whether the MAC is right under any of the keys (each compared in constant time)."""
    ok = False
    for key in keys.keys:
        expected = mac(key, method, cred.recipient, cred.time_ms, cred.nonce_hex, digest)
        ok |= hmac.compare_digest(expected, cred.tag)
    return ok


REPLY_METADATA_KEY = "x-raftchat-reply"
"""Trailing metadata of a signed call's reply: ``reply_mac`` of the answer's bytes."""


def reply_mac(key: bytes, method: str, nonce_hex: str, digest: bytes) -> str:
    """The MAC of a reply to the call of ``method`` that carried ``nonce_hex``: bound to that
    call, so a reply cannot be moved to another. Its first line differs from every request's
    (``v1-reply`` against ``v1``), so neither can stand for the other."""
    signed = f"{VERSION}-reply\n{method}\n{nonce_hex}\n".encode() + digest
    return hmac.digest(key, signed, "sha256").hex()


def sign_reply(keys: PeerKeys, method: str, nonce_hex: str, body: bytes) -> str:
    return reply_mac(keys.signing, method, nonce_hex, body_digest(body))


def reply_matches(keys: PeerKeys, method: str, nonce_hex: str, body: bytes, tag: object) -> bool:
    """Whether ``tag`` is the reply MAC of ``body`` under any of the keys (constant time)."""
    if not isinstance(tag, str):
        return False
    digest = body_digest(body)
    ok = False
    for key in keys.keys:
        ok |= hmac.compare_digest(reply_mac(key, method, nonce_hex, digest), tag)
    return ok


class NonceMemory:
    """The nonces of accepted calls until their time has left the window, at most ``limit``.

    Entries are kept in the order they were accepted; each expires at its call's time plus the
    window. Clocks of nodes agree closely, so that order is nearly the order of expiry, and the
    front is swept on every insertion. When the memory is full, the front entry goes early and
    ``horizon`` (the newest call time forgotten this way) rises: a call stamped no later than
    that can no longer be told from a replay and is refused."""

    def __init__(self, window_ms: int, limit: int = MAX_NONCES) -> None:
        self.window_ms = window_ms
        self.limit = limit
        self._entries: dict[bytes, int] = {}  # nonce -> the call's time (ms)
        self.horizon_ms = -1

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, nonce: bytes, time_ms: int, now_ms: int) -> str | None:
        """Record an authenticated, fresh call's nonce; the problem if it must be refused."""
        if time_ms <= self.horizon_ms:
            return "too old for this node's nonce memory (a flood of calls)"
        if nonce in self._entries:
            return "replayed call (nonce already seen)"
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            expired = entries[oldest] + self.window_ms < now_ms
            if not expired and len(entries) < self.limit:
                break
            # Whatever goes, early or expired, nothing stamped at or before it is taken again:
            # should this node's clock step back, a forgotten call must not become fresh.
            self.horizon_ms = max(self.horizon_ms, entries[oldest])
            del entries[oldest]
        entries[nonce] = time_ms
        return None


class PeerVerifier:
    """Checks the peer credential of incoming calls, with its own nonce memory.

    ``names``: the recipients this node answers to (its host); empty only for a server bound to
    the wildcard address, which cannot tell, and then accepts any recipient.

    The nonce memory lives in the process, so a restarted node would not know the nonces it
    accepted before: calls stamped before ``not_before`` (by default, when the verifier was
    made, at the node's start) are refused, so that a call captured in the 30 s before a
    restart cannot be played to the restarted node. A peer whose clock is behind this node's
    has its calls refused for that long after the start, and retries."""

    def __init__(
        self,
        keys: PeerKeys,
        *,
        names: Collection[str] = (),
        window_s: float = WINDOW_S,
        max_nonces: int = MAX_NONCES,
        clock: Callable[[], float] = time.time,
        not_before: float | None = None,
    ) -> None:
        self.keys = keys
        self.not_before_ms = int((clock() if not_before is None else not_before) * 1000)
        self.names = tuple(recipient_of(f"{n}:0") for n in names)
        self.window_ms = int(window_s * 1000)
        self.nonces = NonceMemory(self.window_ms, max_nonces)
        self._clock = clock

    def verify(self, method: str, value: str | bytes | None, digest: bytes) -> str | None:
        """None when the call may pass, else why not (for the log; the caller learns only
        UNAUTHENTICATED)."""
        if value is None:
            return "no peer credential"
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                return "malformed peer credential"
        cred = parse(value)
        if cred is None:
            return "malformed peer credential"
        if not mac_matches(self.keys, method, cred, digest):
            return "wrong peer credential (another password, or method or body altered)"
        if self.names and not any(_same_recipient(cred.recipient, n) for n in self.names):
            return f"call addressed to {cred.recipient}, not this node ({', '.join(self.names)})"
        now_ms = int(self._clock() * 1000)
        skew_ms = cred.time_ms - now_ms
        if abs(skew_ms) > self.window_ms:
            direction = "ahead of" if skew_ms > 0 else "behind"
            return (
                f"call time {abs(skew_ms) / 1000:.1f} s {direction} this node's clock, outside "
                f"the {self.window_ms / 1000:g} s window (a replay, or clocks not in sync)"
            )
        if cred.time_ms < self.not_before_ms:
            return (
                "call stamped before this node started (a replay from before a restart, or "
                "the caller's clock behind this node's)"
            )
        return self.nonces.remember(cred.nonce, cred.time_ms, now_ms)
